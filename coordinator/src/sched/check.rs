//! What a worker's result must look like for its item, checked when it arrives so that an unfit
//! result is never journaled (a journaled one would fail the step at the end, and every resume
//! after it): the outcome kind the item's payload asks for, one probability per choice, finite
//! numbers in their range, and texts of bounded size.

use evalfleet_proto::v1 as pb;
use pb::item_result::Outcome;
use pb::work_item::Payload;

/// The longest text a result may carry in one field (a generation of a few thousand tokens is
/// tens of KiB; the reference label is a data set's response).
pub const MAX_RESULT_TEXT_BYTES: usize = 1 << 20;

/// Checks `outcome` against what `item` expects; `Err` says what is wrong. An item without a
/// payload (only in tests) accepts any kind. An error outcome is checked for its size only.
pub fn outcome(item: &pb::WorkItem, outcome: &Outcome) -> Result<(), String> {
    let expected = item.payload.as_ref().map(expected_kind);
    let given = kind(outcome);
    if given != "error" && expected.is_some_and(|e| e != given) {
        return Err(format!(
            "a {given} result for a {} item",
            expected.unwrap_or_default()
        ));
    }
    match (outcome, &item.payload) {
        (Outcome::Error(e), _) => text("error message", &e.message),
        (Outcome::Generate(g), _) => {
            for (name, value) in [
                ("label", &g.label),
                ("predict", &g.predict),
                ("label_for_metrics", &g.label_for_metrics),
                ("predict_for_metrics", &g.predict_for_metrics),
                ("finish_reason", &g.finish_reason),
            ] {
                text(name, value)?;
            }
            Ok(())
        }
        (Outcome::Embed(e), _) => finite("score", e.score),
        (Outcome::Reward(r), _) => unit("sigmoid", r.sigmoid),
        (Outcome::Choice(c), payload) => {
            if let Some(Payload::Choice(q)) = payload
                && c.probabilities.len() != q.choice_texts.len()
            {
                return Err(format!(
                    "{} probabilities for {} choices",
                    c.probabilities.len(),
                    q.choice_texts.len()
                ));
            }
            c.probabilities
                .iter()
                .try_for_each(|&p| unit("probability", p))
        }
    }
}

fn expected_kind(payload: &Payload) -> &'static str {
    match payload {
        Payload::Generate(_) => "generate",
        Payload::Embed(_) => "embed",
        Payload::Choice(_) => "choice",
        Payload::Reward(_) => "reward",
    }
}

fn kind(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Generate(_) => "generate",
        Outcome::Embed(_) => "embed",
        Outcome::Choice(_) => "choice",
        Outcome::Reward(_) => "reward",
        Outcome::Error(_) => "error",
    }
}

fn text(name: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_RESULT_TEXT_BYTES {
        return Err(format!(
            "{name} is {} bytes, more than the {MAX_RESULT_TEXT_BYTES} allowed",
            value.len()
        ));
    }
    Ok(())
}

fn finite(name: &str, value: f32) -> Result<(), String> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(format!("{name} is {value}, not a finite number"))
    }
}

/// A probability: finite and within [0, 1].
fn unit(name: &str, value: f32) -> Result<(), String> {
    finite(name, value)?;
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(format!("{name} is {value}, outside [0, 1]"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice_item(n: usize) -> pb::WorkItem {
        pb::WorkItem {
            item_id: "q".into(),
            payload: Some(Payload::Choice(pb::ChoiceItem {
                choice_texts: (0..n).map(|i| format!(" {i}")).collect(),
                ..Default::default()
            })),
        }
    }

    fn probabilities(p: &[f32]) -> Outcome {
        Outcome::Choice(pb::ChoiceResult {
            probabilities: p.to_vec(),
            prompt_tokens: 3,
        })
    }

    #[test]
    fn choice_results_need_one_probability_per_choice_each_in_range() {
        let item = choice_item(4);
        assert_eq!(
            outcome(&item, &probabilities(&[0.1, 0.2, 0.3, 0.4])),
            Ok(())
        );
        assert_eq!(
            outcome(&item, &probabilities(&[0.2, 0.3, 0.5])),
            Err("3 probabilities for 4 choices".into())
        );
        let nan = outcome(&item, &probabilities(&[f32::NAN, 0.2, 0.3, 0.5])).unwrap_err();
        assert!(nan.contains("not a finite number"), "{nan}");
        let big = outcome(&item, &probabilities(&[1.5, 0.0, 0.0, 0.0])).unwrap_err();
        assert!(big.contains("outside [0, 1]"), "{big}");
    }

    #[test]
    fn the_outcome_kind_must_be_the_items() {
        let item = choice_item(4);
        let generate = Outcome::Generate(pb::GenerateResult::default());
        assert_eq!(
            outcome(&item, &generate),
            Err("a generate result for a choice item".into())
        );
        // An error fits every item; a payload-less item (tests) any kind.
        let error = Outcome::Error(pb::ItemError::default());
        assert_eq!(outcome(&item, &error), Ok(()));
        assert_eq!(outcome(&pb::WorkItem::default(), &generate), Ok(()));
    }

    #[test]
    fn scores_must_be_finite_and_texts_bounded() {
        let embed = pb::WorkItem {
            payload: Some(Payload::Embed(pb::EmbedItem::default())),
            ..Default::default()
        };
        let score = |s| Outcome::Embed(pb::EmbedResult { score: s });
        assert_eq!(outcome(&embed, &score(0.5)), Ok(()));
        assert!(outcome(&embed, &score(f32::INFINITY)).is_err());
        let reward = pb::WorkItem {
            payload: Some(Payload::Reward(pb::RewardItem::default())),
            ..Default::default()
        };
        let sigmoid = |s| {
            Outcome::Reward(pb::RewardResult {
                sigmoid: s,
                ..Default::default()
            })
        };
        assert_eq!(outcome(&reward, &sigmoid(0.7)), Ok(()));
        assert!(outcome(&reward, &sigmoid(f32::NEG_INFINITY)).is_err());
        let generate = pb::WorkItem {
            payload: Some(Payload::Generate(pb::GenerateItem::default())),
            ..Default::default()
        };
        let long = Outcome::Generate(pb::GenerateResult {
            predict: "x".repeat(MAX_RESULT_TEXT_BYTES + 1),
            ..Default::default()
        });
        let why = outcome(&generate, &long).unwrap_err();
        assert!(why.starts_with("predict is 1048577 bytes"), "{why}");
    }
}
