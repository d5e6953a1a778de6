"""A model's chat template: how a conversation (messages with roles) becomes the text the
model continues, and the stop strings that end its reply.

The template is Jinja, the convention of Hugging Face's tokenizer_config.json and of
llama.cpp: it gets `messages` (each a dict with `role`, `content` and, if given, `name`),
`add_generation_prompt` (true: end where the reply begins), `bos_token` and `eos_token`
("": a character model has neither) and `raise_exception(message)`. A checkpoint stores it
in its info, as {"template": ..., "stop": [...]} under "chat_template" (the `training
chat-template` command writes it); one without gets PLAIN. A template from a checkpoint is
untrusted: it is rendered by model/template_sandbox.py, sandboxed and bounded, and a bad
one fails with a ChatTemplateError, never anything else.

    PLAIN  (no template)        play layout (`play_template`: a corpus of `NAME:` speeches)

    user: How are you?          ROMEO:
                                How are you?
    assistant:␣
                                JULIET:
    stop: "\\n\\n"                stop: "\\n\\n"
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError, TemplateSyntaxError

from model.decoding.params import MAX_STOP_CHARS, MAX_STOPS
from model.template_sandbox import BoundedTemplate, OutputTooLong

INFO_KEY = "chat_template"  # where a checkpoint's info holds the template
MAX_TEMPLATE_CHARS = 65_536  # Hugging Face's largest templates are some 15,000
MAX_NAME_CHARS = 64
ROLES = ("system", "user", "assistant")
# The shipped model's speakers: two lovers of its corpus for the two sides of a chat, and
# the Chorus, who speaks the plays' prologues, for the system message that sets the scene.
PLAY_NAMES = {"system": "CHORUS", "user": "ROMEO", "assistant": "JULIET"}
TURN_END = "\n\n"  # both built-in layouts end each message with a blank line

# A message is trimmed, except the assistant's: a reply is written back as it came, so the
# conversation reads what the model wrote (a reply's state is that text's: a state then
# continues the next turn's conversation, app/http/chat.py).
_PLAIN_SOURCE = """\
{% for message in messages %}
{{ message.role }}: \
{{ message.content if message.role == 'assistant' else message.content | trim }}{{ '\\n\\n' }}
{%- endfor %}
{% if add_generation_prompt %}assistant: {% endif %}"""

# The names are set in the template's first line, so a template read back shows them.
_PLAY_SOURCE = """\
{% set names = NAMES %}
{% for message in messages %}
{{ message.name or names[message.role] }}:{{ '\\n' }}\
{{ message.content if message.role == 'assistant' else message.content | trim }}{{ '\\n\\n' }}
{%- endfor %}
{% if add_generation_prompt %}{{ names.assistant }}:{{ '\\n' }}{% endif %}"""


class ChatTemplateError(ValueError):
    """A template that cannot be stored or cannot render these messages; the message is
    one line, meant for the client or the user."""


class TemplateRefused(ChatTemplateError):
    """The template itself refused the messages (its raise_exception), e.g. roles that do
    not alternate."""


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja template and the stop strings that end a reply (what a chat request gets
    when it gives no `stop`)."""

    template: str
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.template, str) or not self.template:
            raise ChatTemplateError("the chat template must be a non-empty string")
        if len(self.template) > MAX_TEMPLATE_CHARS:
            raise ChatTemplateError(
                f"the chat template has {len(self.template):,} characters; at most "
                f"{MAX_TEMPLATE_CHARS:,}"
            )
        stops = self.stop
        if not (
            isinstance(stops, tuple)
            and len(stops) <= MAX_STOPS
            and all(isinstance(s, str) and 1 <= len(s) <= MAX_STOP_CHARS for s in stops)
        ):
            raise ChatTemplateError(
                f"the chat template's stop must be at most {MAX_STOPS} strings of 1 to "
                f"{MAX_STOP_CHARS} characters"
            )

    def to_json(self) -> dict[str, Any]:
        return {"template": self.template, "stop": list(self.stop)}

    @classmethod
    def from_json(cls, data: Any) -> ChatTemplate:
        """From a checkpoint's info; ChatTemplateError for anything but {"template": str,
        "stop": [str, ...]} within the limits."""
        if not isinstance(data, dict) or not isinstance(data.get("stop", []), list):
            raise ChatTemplateError(
                'the stored chat template must be {"template": "...", "stop": [...]}'
            )
        return cls(data.get("template"), tuple(data.get("stop", [])))

    def render(self, messages: Sequence[Mapping[str, str]], max_chars: int) -> str:
        """The conversation as text, ending where the assistant's reply begins. Raises
        ChatTemplateError (TemplateRefused when the template refuses the messages) naming
        the template, or OutputTooLong past `max_chars` characters."""
        compiled = _compiled(self.template)
        if isinstance(compiled, str):
            raise ChatTemplateError(compiled)
        variables = {
            "messages": [dict(message) for message in messages],
            "add_generation_prompt": True,
            "bos_token": "",
            "eos_token": "",
        }
        text_chars = sum(len(str(value)) for message in messages for value in message.values())
        try:
            return compiled.render(variables, max_chars, text_chars)
        except (OutputTooLong, ChatTemplateError):
            raise
        except RecursionError:
            raise ChatTemplateError("the chat template failed: it recursed too deeply") from None
        except Exception as error:  # whatever the template's own code raised
            raise ChatTemplateError(f"the chat template failed: {_one_line(error)}") from None


PLAIN = ChatTemplate(_PLAIN_SOURCE, (TURN_END,))


def play_template(names: Mapping[str, str] | None = None) -> ChatTemplate:
    """The play layout: each message a speech, `NAME:` on its own line, then its text and
    a blank line, ending with the assistant's name line; the reply stops at a blank line.
    `names` maps roles (system, user, assistant) to speakers; PLAY_NAMES fills the rest.
    A message's own `name` speaks in place of its role's."""
    chosen = {**PLAY_NAMES, **(names or {})}
    for role, name in chosen.items():
        if role not in ROLES:
            raise ChatTemplateError(f"no role {role!r}; the roles are {', '.join(ROLES)}")
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_CHARS or "\n" in name:
            raise ChatTemplateError(
                f"the {role} name must be 1 to {MAX_NAME_CHARS} characters on one line"
            )
    literal = json.dumps({role: chosen[role] for role in ROLES}, ensure_ascii=True)
    return ChatTemplate(_PLAY_SOURCE.replace("NAMES", literal, 1), (TURN_END,))


def stored_template(info: Mapping[str, Any]) -> ChatTemplate | None:
    """The template a checkpoint's info holds, None if none. Raises ChatTemplateError for
    a damaged one."""
    if INFO_KEY not in info:
        return None
    return ChatTemplate.from_json(info[INFO_KEY])


def template_of(info: Mapping[str, Any]) -> ChatTemplate:
    """The template a model chats with: its checkpoint's, or PLAIN."""
    return stored_template(info) or PLAIN


@functools.lru_cache(maxsize=16)
def _compiled(source: str) -> BoundedTemplate | str:
    """The compiled template, or why it does not compile (one line), kept for the next request
    (compiling takes milliseconds, rendering a conversation a tenth of one), as Hugging
    Face keeps its own."""
    try:
        return BoundedTemplate(source, {"raise_exception": _raise_exception})
    except TemplateSyntaxError as error:
        return f"the chat template does not compile: line {error.lineno}: {error.message}"
    except TemplateError as error:
        return f"the chat template does not compile: {_one_line(error)}"


def _raise_exception(message: Any) -> None:
    raise TemplateRefused(f"the chat template refused the messages: {message}")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())[:300]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
