//! LF v0.7.1's eval templates (`eval/template.py`) and `EvalTemplate.format_example`
//! (docs/FIDELITY.md §3.3): every example is
//! `question + "\nA. " + A + ... + "\nD. " + D + answer_str`, the support set becomes
//! user/assistant pairs, the target a user turn, and the system string is prepended to the first
//! message's content.

use super::data::Example;
use crate::datasets::{ChatMessage, Role};

/// LF's `CHOICES`.
pub const CHOICES: [&str; 4] = ["A", "B", "C", "D"];

/// One language's eval template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalTemplate {
    /// Opens the first message; `{subject}` is the subject's display name.
    pub system: &'static str,
    /// Each choice line; `{choice}` is the letter, `{content}` the text.
    pub choice: &'static str,
    /// Ends every example.
    pub answer: &'static str,
    /// Put before a letter to find its scoring token (`" A"`).
    pub prefix: &'static str,
}

/// The `en` template.
pub const EN: EvalTemplate = EvalTemplate {
    system: "The following are multiple choice questions (with answers) about {subject}.\n\n",
    choice: "\n{choice}. {content}",
    answer: "\nAnswer: ",
    prefix: " ",
};

/// The `zh` template.
pub const ZH: EvalTemplate = EvalTemplate {
    system: "以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n",
    choice: "\n{choice}. {content}",
    answer: "\n答案：",
    prefix: " ",
};

/// A chat message (LF's `{"role", "content"}`).
pub type Message = ChatMessage;

impl EvalTemplate {
    /// The template of a `lang` value (`en` or `zh`), as LF's `get_eval_template`.
    pub fn by_lang(lang: &str) -> Option<Self> {
        match lang {
            "en" => Some(EN),
            "zh" => Some(ZH),
            _ => None,
        }
    }

    /// The system string for a subject. `str.format` replaces the placeholder once; the name is
    /// inserted as is (braces in a name are not re-interpreted).
    pub fn system_for(&self, subject_name: &str) -> String {
        self.system.replacen("{subject}", subject_name, 1)
    }

    /// `_parse_example`: the user text of one example.
    pub fn example_text(&self, example: &Example) -> String {
        let mut text = example.question.clone();
        for (letter, content) in CHOICES.iter().zip(&example.choices) {
            let line = self.choice.replacen("{choice}", letter, 1);
            // `{content}` comes after `{choice}` in the template, so replace from the letter on.
            text.push_str(&line.replacen("{content}", content, 1));
        }
        text.push_str(self.answer);
        text
    }

    /// `format_example` without the target's answer turn: the support pairs, then the target's
    /// user turn; the system string opens the first message. The target answer, which LF appends
    /// as a last assistant turn and `encode_oneturn` drops, is returned by the planner separately.
    pub fn messages<'a>(
        &self,
        target: &Example,
        support: impl IntoIterator<Item = &'a Example>,
        subject_name: &str,
    ) -> Vec<Message> {
        let mut messages = Vec::new();
        for shot in support {
            messages.push(Message {
                role: Role::User,
                content: self.example_text(shot),
            });
            messages.push(Message {
                role: Role::Assistant,
                content: shot.answer.clone(),
            });
        }
        messages.push(Message {
            role: Role::User,
            content: self.example_text(target),
        });
        let first = &mut messages[0].content;
        *first = self.system_for(subject_name) + first;
        messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(q: &str, answer: &str) -> Example {
        Example {
            question: q.into(),
            choices: ["w".into(), "x".into(), "{content}".into(), "z".into()],
            answer: answer.into(),
            line: 1,
        }
    }

    #[test]
    fn zero_shot_prepends_system_to_the_target() {
        let m = ZH.messages(&ex("问", "B"), [], "农学");
        assert_eq!(m.len(), 1);
        assert_eq!(
            m[0].content,
            "以下是中国关于农学考试的单项选择题，请选出其中的正确答案。\n\n问\nA. w\nB. x\nC. {content}\nD. z\n答案："
        );
    }

    #[test]
    fn support_pairs_then_target() {
        let shots = [ex("s1", "A"), ex("s2", "D")];
        let m = EN.messages(&ex("t", "C"), &shots, "x {subject}");
        let roles: Vec<&str> = m.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["user", "assistant", "user", "assistant", "user"]);
        assert!(m[0].content.starts_with(
            "The following are multiple choice questions (with answers) about x {subject}.\n\ns1\nA. w"
        ));
        assert_eq!(m[3].content, "D");
        assert!(m[4].content.ends_with("\nD. z\nAnswer: "));
    }
}
