"""Chat-template rendering goldens: transformers' `apply_chat_template(tokenize=False)`.

Run with the project venv (transformers 5), after scripts/fetch-models.sh:
    python scripts/goldens/templates_goldens.py
Writes worker/tests/fixtures/tokenize_chat_templates.json. The templates are SmolLM2's own (from
its GGUF) and fixture copies written in the style of well-known ones (Qwen2.5 with a default
system prompt, Llama 3, Llama 3.1, Llama 2, Gemma, Zephyr) plus one that exercises Python string
methods, namespace, tojson and a trailing newline. They are rendered with the SmolLM2 tokenizer's
special tokens (bos <|im_start|>, eos/pad <|im_end|>, unk <|endoftext|>).
"""

import json
import os
from pathlib import Path

import transformers
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
MODELS = Path(os.environ.get("EVALFLEET_MODELS", ROOT / ".models"))
OUT = ROOT / "worker" / "tests" / "fixtures" / "tokenize_chat_templates.json"

QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

LLAMA31 = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)

ZEPHYR = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>
'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""

FEATURES = """{%- set ns = namespace(count=0, chars=0) -%}
{% for m in messages %}
    {% set ns.count = ns.count + 1 %}
    {% set ns.chars = ns.chars + m.content | length %}
[{{ m.role.upper() }}|{{ m.role.title() }}] {{ m.content.strip() | replace('\\n', ' / ') }} {{ m | tojson }} {{ m.content.split() | length }}{{ '' if loop.last else ',' }}
    {% if m.content.startswith('Hi') %}
  starts-with-hi {{ m.content.lower().replace('hi', 'HEY') }}
    {% endif %}
{% for k, v in m.items() %}{{ k }}={{ v | length }};{% endfor %} {{ m.get('missing', 'dflt') }} {{ m.get('role') }} {{ loop.previtem.role if loop.previtem is defined else 'first' }}
{% endfor %}
total={{ ns.count }} chars={{ ns.chars }} {{ messages | map(attribute='role') | join('+') }} tools={{ tools | tojson }}
{{ messages[0] | tojson(indent=2) }}
{{ eos_token if add_generation_prompt else pad_token }} {{ unk_token }}
"""

# transformers' AssistantTracker `{% generation %}` blocks (they render their body unchanged).
TRACKER = """{%- for message in messages %}
{%- if message.role == 'assistant' %}
{{- '<|assistant|>\n' }}
{%- generation %}
{{- message.content + eos_token }}
{%- endgeneration %}
{%- else %}
{{- '<|' + message.role + '|>\n' + message.content + '\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"""

CONVERSATIONS = {
    "user": [("user", "Hi there!")],
    "system_user": [("system", "You are terse."), ("user", "What is the capital of France?")],
    "multi": [("user", "Hi"), ("assistant", "Hello! How can I help?"), ("user", "Tell me a joke.")],
    "system_multi": [
        ("system", "Be kind.\nAlways."),
        ("user", "  padded question \n"),
        ("assistant", " answer with spaces  "),
        ("user", "你好，世界！😀 \"quoted\" \\ back\\slash\ttab"),
        ("assistant", "再见"),
    ],
    "bad_order": [("user", "one"), ("user", "two")],
}


def main():
    gguf_dir = MODELS / "smollm2-135m-instruct-gguf"
    tok = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    templates = {
        "smollm2": tok.chat_template,
        "qwen25": QWEN25,
        "llama3": LLAMA3,
        "llama31": LLAMA31,
        "llama2": LLAMA2,
        "gemma": GEMMA,
        "zephyr": ZEPHYR,
        "features": FEATURES,
        "tracker": TRACKER,
    }
    cases = []
    for tname, source in templates.items():
        for cname, turns in CONVERSATIONS.items():
            messages = [{"role": r, "content": c} for r, c in turns]
            for agp in (True, False):
                case = {"template": tname, "conversation": cname, "add_generation_prompt": agp}
                try:
                    case["rendered"] = tok.apply_chat_template(
                        messages, chat_template=source, tokenize=False, add_generation_prompt=agp
                    )
                except Exception as e:  # noqa: BLE001 - the error is part of the golden
                    case["error"] = str(e)
                cases.append(case)
    out = {
        "generator": f"transformers {transformers.__version__} apply_chat_template(tokenize=False)",
        "templates": templates,
        "conversations": {k: [list(t) for t in v] for k, v in CONVERSATIONS.items()},
        "cases": cases,
    }
    OUT.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    errors = sum("error" in c for c in cases)
    print(f"wrote {len(cases)} cases ({errors} errors) to {OUT}")


if __name__ == "__main__":
    main()
