"""model/chat_template.py: the built-in layouts, the stored form, and a bad template as
one ChatTemplateError naming it."""

from __future__ import annotations

import pytest

from model.chat_template import (
    INFO_KEY,
    MAX_TEMPLATE_CHARS,
    PLAIN,
    PLAY_NAMES,
    ChatTemplate,
    ChatTemplateError,
    TemplateRefused,
    play_template,
    stored_template,
    template_of,
)
from model.template_sandbox import OutputTooLong

TALK = [
    {"role": "system", "content": "A street in Verona."},
    {"role": "user", "content": "  Good morrow.\n"},
    {"role": "assistant", "content": "And to you."},
    {"role": "user", "content": "Who art thou?", "name": "MERCUTIO"},
]


def test_plain_writes_role_lines_and_ends_with_the_assistants():
    text = PLAIN.render(TALK, 1000)
    assert text == (
        "system: A street in Verona.\n\nuser: Good morrow.\n\nassistant: And to you.\n\n"
        "user: Who art thou?\n\nassistant: "
    )
    assert PLAIN.stop == ("\n\n",)


def test_a_reply_is_written_back_as_it_came_the_other_messages_trimmed():
    talk = [
        {"role": "user", "content": " Good morrow. \n"},
        {"role": "assistant", "content": " And to "},
        {"role": "user", "content": "Who?"},
    ]
    assert PLAIN.render(talk, 1000) == (
        "user: Good morrow.\n\nassistant:  And to \n\nuser: Who?\n\nassistant: "
    )
    assert play_template().render(talk, 1000) == (
        "ROMEO:\nGood morrow.\n\nJULIET:\n And to \n\nROMEO:\nWho?\n\nJULIET:\n"
    )


def test_play_writes_speeches_with_the_names_chosen():
    template = play_template({"user": "FIRST CITIZEN"})
    text = template.render(TALK, 1000)
    assert text == (
        "CHORUS:\nA street in Verona.\n\nFIRST CITIZEN:\nGood morrow.\n\n"
        "JULIET:\nAnd to you.\n\nMERCUTIO:\nWho art thou?\n\nJULIET:\n"
    )
    assert template.stop == ("\n\n",)
    default = play_template().render([{"role": "user", "content": "Hi"}], 100)
    assert default == f"{PLAY_NAMES['user']}:\nHi\n\n{PLAY_NAMES['assistant']}:\n"


def test_play_names_that_would_break_the_template_stay_text():
    names = {"assistant": 'A "quoted" {{ name }} \\ one'}
    text = play_template(names).render([{"role": "user", "content": "x"}], 200)
    assert text.endswith('A "quoted" {{ name }} \\ one:\n')


@pytest.mark.parametrize(
    "names, words",
    [
        ({"tool": "X"}, "no role 'tool'"),
        ({"user": ""}, "user name"),
        ({"user": "A\nB"}, "one line"),
        ({"user": "N" * 65}, "1 to 64"),
        ({"user": 5}, "user name"),
    ],
)
def test_play_names_are_checked(names, words):
    with pytest.raises(ChatTemplateError, match=words):
        play_template(names)


def test_the_stored_form_round_trips_and_the_info_picks_it():
    template = play_template()
    assert ChatTemplate.from_json(template.to_json()) == template
    info = {"val_loss": 1.0, INFO_KEY: template.to_json()}
    assert stored_template(info) == template_of(info) == template
    assert stored_template({}) is None and template_of({}) is PLAIN


@pytest.mark.parametrize(
    "stored, words",
    [
        ("{{ x }}", "must be"),
        ({"stop": ["\n"]}, "non-empty string"),
        ({"template": ""}, "non-empty string"),
        ({"template": 7}, "non-empty string"),
        ({"template": "x" * (MAX_TEMPLATE_CHARS + 1)}, "at most"),
        ({"template": "x", "stop": "\n"}, "must be"),
        ({"template": "x", "stop": ["a", "b", "c", "d", "e"]}, "at most 4"),
        ({"template": "x", "stop": [""]}, "1 to 32"),
        ({"template": "x", "stop": [3]}, "1 to 32"),
    ],
)
def test_a_damaged_stored_template_is_one_error(stored, words):
    with pytest.raises(ChatTemplateError, match=words):
        stored_template({INFO_KEY: stored})


@pytest.mark.parametrize(
    "source, words",
    [
        ("{% for m in messages %}", "does not compile: line 1"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{{ missing.attribute }}", "'missing' is undefined"),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "recursed"),
        ("{{ messages.append(1) }}", "unsafe"),
        ("{{ 'x' * 10**9 }}", "could make"),
        ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}", "steps"),
    ],
)
def test_a_template_that_fails_names_itself(source, words):
    with pytest.raises(ChatTemplateError, match="the chat template") as caught:
        ChatTemplate(source).render(TALK, 1000)
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_template_may_refuse_the_messages():
    source = (
        "{% if messages[0].role != 'user' %}{{ raise_exception('start with the user') }}"
        "{% endif %}ok"
    )
    with pytest.raises(TemplateRefused, match="refused the messages: start with the user"):
        ChatTemplate(source).render(TALK, 1000)
    assert ChatTemplate(source).render(TALK[1:], 1000) == "ok"


def test_the_text_is_capped():
    assert len(PLAIN.render([{"role": "user", "content": "a" * 90}], 110)) == 109
    with pytest.raises(OutputTooLong):
        PLAIN.render([{"role": "user", "content": "a" * 100}], 110)


def test_hugging_faces_conventions_hold():
    """A ChatML template as Hugging Face ships them: `+` on strings, trimmed blocks, the
    generation prompt, bos_token."""
    source = (
        "{{ bos_token }}{% for message in messages %}\n"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}\n"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    text = ChatTemplate(source).render([{"role": "user", "content": "Hi"}], 1000)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
