//! The named templates of LLaMA-Factory v0.7.1 (`src/llmtuner/data/template.py`, the
//! `_register_template` calls), as data. Tool/function formats are not carried: evalfleet's
//! datasets have user and assistant turns only.

use super::lf_template::{Formatter, Slot, Template};
use crate::error::{Error, Result};

/// What one `_register_template(...)` call sets; `None` formatters take LF's defaults.
#[derive(Default)]
struct Spec {
    user: Option<Formatter>,
    assistant: Option<Formatter>,
    system: Option<Formatter>,
    observation: Option<Formatter>,
    separator: Option<Formatter>,
    default_system: &'static str,
    stop_words: &'static [&'static str],
    efficient_eos: bool,
    replace_eos: bool,
    force_system: bool,
}

fn t(s: &str) -> Slot {
    Slot::Text(s.to_string())
}
fn tok(s: &str) -> Slot {
    Slot::Token(s.to_string())
}
fn f(slots: Vec<Slot>) -> Option<Formatter> {
    Some(Formatter::new(slots))
}
fn f1(s: &str) -> Option<Formatter> {
    f(vec![t(s)])
}

/// LF's `_register_template`: fills in the default formatters.
fn register(name: &'static str, spec: Spec) -> Template {
    let content = || Formatter::new(vec![t("{{content}}")]);
    let assistant_default = if spec.efficient_eos {
        content()
    } else {
        Formatter::new(vec![t("{{content}}"), Slot::Eos])
    };
    let observation = spec
        .observation
        .or_else(|| spec.user.clone())
        .unwrap_or_else(content);
    Template {
        name,
        format_user: spec.user.unwrap_or_else(content),
        format_assistant: spec.assistant.unwrap_or(assistant_default),
        format_system: spec.system.unwrap_or_else(content),
        format_observation: observation,
        format_separator: spec.separator.unwrap_or_else(|| Formatter::new(Vec::new())),
        default_system: spec.default_system.to_string(),
        stop_words: spec.stop_words.iter().map(|s| s.to_string()).collect(),
        efficient_eos: spec.efficient_eos,
        replace_eos: spec.replace_eos,
        force_system: spec.force_system,
        // LF picks Llama2Template by name prefix.
        llama2_style: name.starts_with("llama2"),
    }
}

const CHATML_USER: &str = "<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n";
const CHATML_SYSTEM: &str = "<|im_start|>system\n{{content}}<|im_end|>\n";
const CHATML_TOOL: &str = "<|im_start|>tool\n{{content}}<|im_end|>\n<|im_start|>assistant\n";
const LLAMA2_SYSTEM: &str = "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe. Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. Please ensure that your responses are socially unbiased and positive in nature.\n\nIf a question does not make any sense, or is not factually coherent, explain why instead of answering something not correct. If you don't know the answer to a question, please don't share false information.";
const DBRX_SYSTEM: &str = "You are DBRX, created by Databricks. You were last updated in December 2023. You answer questions based on information available up to that point.\nYOU PROVIDE SHORT RESPONSES TO SHORT QUESTIONS OR STATEMENTS, but provide thorough responses to more complex and open-ended questions.\nYou assist with various tasks, from writing to coding (using markdown for code blocks — remember to use ``` with code, JSON, and tables).\n(You do not have real-time data access or code execution capabilities. You avoid stereotyping and provide balanced perspectives on controversial topics. You do not provide song lyrics, poems, or news articles and do not divulge details of your training data.)\nThis is your system prompt, guiding your responses. Do not reference it, just respond to the user. If you find yourself talking about this message, stop. You should be responding appropriately and usually that means not mentioning this.\nYOU DO NOT MENTION ANY OF THIS INFORMATION ABOUT YOURSELF UNLESS THE INFORMATION IS DIRECTLY PERTINENT TO THE USER'S QUERY.";
const YAYI_SYSTEM: &str = "You are a helpful, respectful and honest assistant named YaYi developed by Beijing Wenge Technology Co.,Ltd. Always answer as helpfully as possible, while being safe.  Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. Please ensure that your responses are socially unbiased and positive in nature.\n\nIf a question does not make any sense, or is not factually coherent, explain why instead of answering something not correct. If you don't know the answer to a question, please don't share false information.";
const INTERN2_SYSTEM: &str = "You are an AI assistant whose name is InternLM (书生·浦语).\n- InternLM (书生·浦语) is a conversational language model that is developed by Shanghai AI Laboratory (上海人工智能实验室). It is designed to be helpful, honest, and harmless.\n- InternLM (书生·浦语) can understand and communicate fluently in the language chosen by the user such as English and 中文.";

/// Names of all LLaMA-Factory v0.7.1 templates, sorted.
pub fn known_template_names() -> Vec<&'static str> {
    let mut names: Vec<_> = all_templates().iter().map(|t| t.name).collect();
    names.sort_unstable();
    names
}

/// The LLaMA-Factory template called `name`; an unknown name is an error listing the known ones.
pub fn get_template(name: &str) -> Result<Template> {
    all_templates()
        .into_iter()
        .find(|t| t.name == name)
        .ok_or_else(|| {
            Error::Template(format!(
                "unknown LLaMA-Factory template {name:?}; known templates: {}",
                known_template_names().join(", ")
            ))
        })
}

/// Every template LF v0.7.1 registers, in its file order.
fn all_templates() -> Vec<Template> {
    let chatglm3_user = || {
        f(vec![
            tok("<|user|>"),
            t("\n"),
            t("{{content}}"),
            tok("<|assistant|>"),
        ])
    };
    let chatglm3_obs = || {
        f(vec![
            tok("<|observation|>"),
            t("\n"),
            t("{{content}}"),
            tok("<|assistant|>"),
        ])
    };
    vec![
        register(
            "alpaca",
            Spec {
                user: f1("### Instruction:\n{{content}}\n\n### Response:\n"),
                separator: f1("\n\n"),
                default_system: "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n",
                ..Spec::default()
            },
        ),
        register(
            "aquila",
            Spec {
                user: f1("Human: {{content}}###Assistant:"),
                separator: f1("###"),
                default_system: "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions.",
                stop_words: &["</s>"],
                efficient_eos: true,
                ..Spec::default()
            },
        ),
        register(
            "atom",
            Spec {
                user: f(vec![
                    Slot::Bos,
                    t("Human: {{content}}\n"),
                    Slot::Eos,
                    Slot::Bos,
                    t("Assistant:"),
                ]),
                assistant: f(vec![t("{{content}}\n"), Slot::Eos]),
                ..Spec::default()
            },
        ),
        register(
            "baichuan",
            Spec {
                user: f(vec![
                    tok("<reserved_102>"),
                    t("{{content}}"),
                    tok("<reserved_103>"),
                ]),
                efficient_eos: true,
                ..Spec::default()
            },
        ),
        register(
            "baichuan2",
            Spec {
                user: f1("<reserved_106>{{content}}<reserved_107>"),
                efficient_eos: true,
                ..Spec::default()
            },
        ),
        register(
            "belle",
            Spec {
                user: f1("Human: {{content}}\n\nBelle: "),
                system: f(vec![Slot::Bos, t("{{content}}")]),
                separator: f1("\n\n"),
                force_system: true,
                ..Spec::default()
            },
        ),
        register(
            "bluelm",
            Spec {
                user: f(vec![tok("[|Human|]:"), t("{{content}}"), tok("[|AI|]:")]),
                ..Spec::default()
            },
        ),
        register(
            "breeze",
            Spec {
                user: f1("[INST] {{content}} [/INST] "),
                system: f(vec![Slot::Bos, t("{{content}}")]),
                default_system: "You are a helpful AI assistant built by MediaTek Research. The user you are helping speaks Traditional Chinese and comes from Taiwan.",
                efficient_eos: true,
                ..Spec::default()
            },
        ),
        register(
            "chatglm2",
            Spec {
                user: f1("[Round {{idx}}]\n\n问：{{content}}\n\n答："),
                system: f(vec![tok("[gMASK]"), tok("sop"), t("{{content}}")]),
                separator: f1("\n\n"),
                efficient_eos: true,
                force_system: true,
                ..Spec::default()
            },
        ),
        register(
            "chatglm3",
            Spec {
                user: chatglm3_user(),
                assistant: f(vec![t("\n"), t("{{content}}")]),
                system: f(vec![tok("[gMASK]"), tok("sop"), t("{{content}}")]),
                observation: chatglm3_obs(),
                stop_words: &["<|user|>", "<|observation|>"],
                efficient_eos: true,
                force_system: true,
                ..Spec::default()
            },
        ),
        register(
            "chatglm3_system",
            Spec {
                user: chatglm3_user(),
                assistant: f(vec![t("\n"), t("{{content}}")]),
                system: f(vec![
                    tok("[gMASK]"),
                    tok("sop"),
                    tok("<|system|>"),
                    t("\n"),
                    t("{{content}}"),
                ]),
                observation: chatglm3_obs(),
                default_system: "You are ChatGLM3, a large language model trained by Zhipu.AI. Follow the user's instructions carefully. Respond using markdown.",
                stop_words: &["<|user|>", "<|observation|>"],
                efficient_eos: true,
                ..Spec::default()
            },
        ),
        register(
            "chatml",
            Spec {
                user: f1(CHATML_USER),
                system: f1(CHATML_SYSTEM),
                observation: f1(CHATML_TOOL),
                separator: f1("\n"),
                stop_words: &["<|im_end|>", "<|im_start|>"],
                replace_eos: true,
                ..Spec::default()
            },
        ),
        register(
            "chatml_de",
            Spec {
                user: f1(CHATML_USER),
                system: f1(CHATML_SYSTEM),
                observation: f1(CHATML_TOOL),
                separator: f1("\n"),
                default_system: "Du bist ein freundlicher und hilfsbereiter KI-Assistent.",
                stop_words: &["<|im_end|>", "<|im_start|>"],
                replace_eos: true,
                ..Spec::default()
            },
        ),
        register(
            "codegeex2",
            Spec {
                system: f(vec![tok("[gMASK]"), tok("sop"), t("{{content}}")]),
                force_system: true,
                ..Spec::default()
            },
        ),
        register(
            "cohere",
            Spec {
                user: f1(
                    "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>{{content}}<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
                ),
                system: f(vec![Slot::Bos]),
                force_system: true,
                ..Spec::default()
            },
        ),
        register(
            "cpm",
            Spec {
                user: f1("<用户>{{content}}<AI>"),
                system: f(vec![Slot::Bos, t("{{content}}")]),
                force_system: true,
                ..Spec::default()
            },
        ),
        register(
            "dbrx",
            Spec {
                user: f1(CHATML_USER),
                system: f1(CHATML_SYSTEM),
                observation: f1(CHATML_TOOL),
                separator: f1("\n"),
                default_system: DBRX_SYSTEM,
                stop_words: &["<|im_end|>"],
                replace_eos: true,
                ..Spec::default()
            },
        ),
        register(
            "deepseek",
            Spec {
                user: f1("User: {{content}}\n\nAssistant:"),
                system: f(vec![Slot::Bos, t("{{content}}")]),
                force_system: true,
                ..Spec::default()
            },
        ),
        register(
            "deepseekcoder",
            Spec {
                user: f1("### Instruction:\n{{content}}\n### Response:"),
                assistant: f(vec![t("\n"), t("{{content}}")]),
                separator: f1("\n<|EOT|>\n"),
                default_system: "You are an AI programming assistant, utilizing the Deepseek Coder model, developed by Deepseek Company, and you only answer questions related to computer science. For politically sensitive questions, security and privacy issues, and other non-computer science questions, you will refuse to answer\n",
                stop_words: &["<|EOT|>"],
                efficient_eos: true,
                ..Spec::default()
            },
        ),
        register(
            "default",
            Spec {
                user: f1("Human: {{content}}\nAssistant: "),
                system: f1("{{content}}\n"),
                separator: f1("\n"),
                ..Spec::default()
            },
        ),
        register(
            "empty",
            Spec {
                user: f1("{{content}}"),
                assistant: f1("{{content}}"),
                ..Spec::default()
            },
        ),
        register(
            "falcon",
            Spec {
                user: f1("User: {{content}}\nFalcon:"),
                separator: f1("\n"),
                efficient_eos: true,
                ..Spec::default()
            },
        ),
        register(
            "fewshot",
            Spec {
                separator: f1("\n\n"),
                efficient_eos: true,
                ..Spec::default()
            },
        ),
        register(
            "gemma",
            Spec {
                user: f1("<start_of_turn>user\n{{content}}<end_of_turn>\n<start_of_turn>model\n"),
                system: f(vec![Slot::Bos, t("{{content}}")]),
                observation: f1(
                    "<start_of_turn>tool\n{{content}}<end_of_turn>\n<start_of_turn>model\n",
                ),
                separator: f1("<end_of_turn>\n"),
                efficient_eos: true,
                force_system: true,
                ..Spec::default()
            },
        ),
        register(
            "intern",
            Spec {
                user: f(vec![
                    t("<|User|>:{{content}}"),
                    tok("<eoh>"),
                    t("\n<|Bot|>:"),
                ]),
                separator: f(vec![tok("<eoa>"), t("\n")]),
                stop_words: &["<eoa>"],
                efficient_eos: true,
                ..Spec::default()
            },
        ),
        register(
            "intern2",
            Spec {
                user: f1(CHATML_USER),
                system: f(vec![Slot::Bos, t(CHATML_SYSTEM)]),
                separator: f1("\n"),
                default_system: INTERN2_SYSTEM,
                stop_words: &["<|im_end|>"],
                efficient_eos: true,
                ..Spec::default()
            },
        ),
        register(
            "llama2",
            Spec {
                user: f(vec![Slot::Bos, t("[INST] {{content}} [/INST]")]),
                system: f1("<<SYS>>\n{{content}}\n<</SYS>>\n\n"),
                default_system: LLAMA2_SYSTEM,
                ..Spec::default()
            },
        ),
        register(
            "llama2_zh",
            Spec {
                user: f(vec![Slot::Bos, t("[INST] {{content}} [/INST]")]),
                system: f1("<<SYS>>\n{{content}}\n<</SYS>>\n\n"),
                default_system: "You are a helpful assistant. 你是一个乐于助人的助手。",
                ..Spec::default()
            },
        ),
        register(
            "llama3",
            Spec {
                user: f1(
                    "<|start_header_id|>user<|end_header_id|>\n\n{{content}}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
                ),
                system: f(vec![
                    Slot::Bos,
                    t("<|start_header_id|>system<|end_header_id|>\n\n{{content}}<|eot_id|>"),
                ]),
                observation: f1(
                    "<|start_header_id|>tool<|end_header_id|>\n\n{{content}}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
                ),
                default_system: "You are a helpful assistant.",
                stop_words: &["<|eot_id|>"],
                replace_eos: true,
                ..Spec::default()
            },
        ),
        register(
            "mistral",
            Spec {
                user: f1(" [INST] {{content}} [/INST]"),
                system: f(vec![Slot::Bos, t("{{content}}")]),
                force_system: true,
                ..Spec::default()
            },
        ),
        register(
            "olmo",
            Spec {
                user: f1("<|user|>\n{{content}}<|assistant|>"),
                assistant: f(vec![t("{{content}}"), Slot::Eos]),
                system: f(vec![Slot::Eos, t("{{content}}")]),
                force_system: true,
                ..Spec::default()
            },
        ),
        register(
            "openchat",
            Spec {
                user: f(vec![
                    t("GPT4 Correct User: {{content}}"),
                    Slot::Eos,
                    t("GPT4 Correct Assistant:"),
                ]),
                assistant: f(vec![t("{{content}}"), Slot::Eos]),
                system: f(vec![Slot::Bos, t("{{content}}")]),
                force_system: true,
                ..Spec::default()
            },
        ),
        register(
            "orion",
            Spec {
                user: f(vec![t("Human: {{content}}\n\nAssistant: "), Slot::Eos]),
                system: f(vec![Slot::Bos, t("{{content}}")]),
                force_system: true,
                ..Spec::default()
            },
        ),
        register(
            "phi",
            Spec {
                user: f1("<|user|>\n{{content}}<|end|>\n<|assistant|>\n"),
                system: f(vec![Slot::Bos, t("<|system|>\n{{content}}<|end|>\n")]),
                observation: f1("<|function_output|>\n{{content}}<|end|>\n<|assistant|>\n"),
                separator: f1("\n"),
                default_system: "You are a helpful AI assistant.",
                stop_words: &["<|end|>"],
                replace_eos: true,
                ..Spec::default()
            },
        ),
        register(
            "qwen",
            Spec {
                user: f1(CHATML_USER),
                system: f1(CHATML_SYSTEM),
                observation: f1(CHATML_TOOL),
                separator: f1("\n"),
                default_system: "You are a helpful assistant.",
                stop_words: &["<|im_end|>"],
                replace_eos: true,
                ..Spec::default()
            },
        ),
        register(
            "solar",
            Spec {
                user: f1("### User:\n{{content}}\n\n### Assistant:\n"),
                system: f1("### System:\n{{content}}\n\n"),
                efficient_eos: true,
                ..Spec::default()
            },
        ),
        register(
            "starchat",
            Spec {
                user: f1("<|user|>\n{{content}}<|end|>\n<|assistant|>"),
                system: f1("<|system|>\n{{content}}<|end|>\n"),
                separator: f1("\n"),
                stop_words: &["<|end|>"],
                replace_eos: true,
                force_system: true,
                ..Spec::default()
            },
        ),
        register(
            "vicuna",
            Spec {
                user: f1("USER: {{content}} ASSISTANT:"),
                default_system: "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.",
                ..Spec::default()
            },
        ),
        register(
            "xuanyuan",
            Spec {
                user: f1("Human: {{content}} Assistant:"),
                default_system: "以下是用户和人工智能助手之间的对话。用户以Human开头，人工智能助手以Assistant开头，会对人类提出的问题给出有帮助、高质量、详细和礼貌的回答，并且总是拒绝参与与不道德、不安全、有争议、政治敏感等相关的话题、问题和指示。\n",
                ..Spec::default()
            },
        ),
        register(
            "xverse",
            Spec {
                user: f1("Human: {{content}}\n\nAssistant: "),
                ..Spec::default()
            },
        ),
        register(
            "yayi",
            Spec {
                user: f(vec![
                    tok("<|Human|>"),
                    t(":\n{{content}}\n\n"),
                    tok("<|YaYi|>"),
                    t(":"),
                ]),
                system: f(vec![tok("<|System|>"), t(":\n{{content}}\n\n")]),
                separator: f1("\n\n"),
                default_system: YAYI_SYSTEM,
                stop_words: &["<|End|>"],
                ..Spec::default()
            },
        ),
        register(
            "yi",
            Spec {
                user: f1(CHATML_USER),
                separator: f1("\n"),
                stop_words: &["<|im_end|>"],
                replace_eos: true,
                ..Spec::default()
            },
        ),
        register(
            "yi_vl",
            Spec {
                user: f1("### Human: {{content}}\n### Assistant:"),
                separator: f1("\n"),
                default_system: "This is a chat between an inquisitive human and an AI assistant. Assume the role of the AI assistant. Read all the images carefully, and respond to the human's questions with informative, helpful, detailed and polite answers. 这是一个好奇的人类和一个人工智能助手之间的对话。假设你扮演这个AI助手的角色。仔细阅读所有的图像，并对人类的问题做出信息丰富、有帮助、详细的和礼貌的回答。\n\n",
                stop_words: &["###"],
                efficient_eos: true,
                ..Spec::default()
            },
        ),
        register(
            "yuan",
            Spec {
                user: f(vec![t("{{content}}"), tok("<sep>")]),
                separator: f1("\n"),
                stop_words: &["<eod>"],
                replace_eos: true,
                ..Spec::default()
            },
        ),
        register(
            "zephyr",
            Spec {
                user: f(vec![
                    t("<|user|>\n{{content}}"),
                    Slot::Eos,
                    t("<|assistant|>"),
                ]),
                assistant: f(vec![t("\n{{content}}"), Slot::Eos]),
                system: f(vec![t("<|system|>\n{{content}}"), Slot::Eos]),
                default_system: "You are Zephyr, a helpful assistant.",
                ..Spec::default()
            },
        ),
        register(
            "ziya",
            Spec {
                user: f1("<human>:{{content}}\n<bot>:"),
                separator: f1("\n"),
                ..Spec::default()
            },
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_template_lists_names() {
        let err = get_template("nope").unwrap_err().to_string();
        assert!(
            err.contains("qwen") && err.contains("llama3") && err.contains("baichuan2"),
            "{err}"
        );
        assert!(get_template("qwen").is_ok());
    }
}
