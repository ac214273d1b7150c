"""The malformed-profile corpus (tests/data/bad-profiles): every file is refused with one line
naming the file and the field, and the CLIs exit 2 on it."""

from __future__ import annotations

from pathlib import Path

import pytest
from kvmcompat import cli as client_cli

from kvmsim import ProfileError
from kvmsim import cli as kvmsim_cli
from kvmsim.kernel import profile

CORPUS = sorted((Path(__file__).parent / "data" / "bad-profiles").glob("*.toml"))


def expectation(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: the first line must say what error is expected"
    return first.removeprefix("# expect: ")


def test_the_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 25


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_refused_with_one_line_naming_file_and_field(path: Path) -> None:
    with pytest.raises(ProfileError) as exc:
        profile.load(path)
    line = str(exc.value)
    assert "\n" not in line
    assert line.startswith(f"{path}: ")
    assert expectation(path) in line


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_both_clis_exit_2(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert client_cli.main(["--sim", str(path)]) == 2
    assert kvmsim_cli.main(["show", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(expectation(path) in line for line in err)
