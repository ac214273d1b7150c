"""kvmsim's error family: one root, one branch a command line answers with exit 2, and no
ValueError from a bug dressed as a usage error."""

from __future__ import annotations

import argparse

import pytest
from kvmcompat import CompatError, UnknownArch

from kvmsim import KvmError, ProfileError
from kvmsim.cli import commands
from kvmsim.intercept.attach import AttachError
from kvmsim.intercept.build import BuildError
from kvmsim.intercept.command import RunError, StartError
from kvmsim.intercept.server import ServerError
from kvmsim.intercept.trust import UntrustedError
from kvmsim.intercept.wire import Disconnected, ProtocolError
from kvmsim.kernel.errors import InvalidInput, KvmsimError
from kvmsim.lab.debian import CacheError, FetchError

EVERY = [
    KvmError, ProfileError, commands.UsageError, FetchError, CacheError, AttachError, BuildError, RunError,
    StartError, ServerError, UntrustedError, ProtocolError, Disconnected,
]  # fmt: skip


@pytest.mark.parametrize("cls", EVERY, ids=lambda c: c.__name__)
def test_every_error_kvmsim_reports_has_one_root(cls: type[Exception]) -> None:
    assert issubclass(cls, KvmsimError)


@pytest.mark.parametrize("cls", [CompatError, UnknownArch], ids=lambda c: c.__name__)
def test_the_client_has_its_own_root_and_no_exit_code(cls: type[Exception]) -> None:
    """The client's failures are its own (CompatError, and UnknownArch a ValueError of its
    device seam), never the simulator's; exit codes are its CLI's (kvmcompat.cli.EXIT_CODES)."""
    assert not issubclass(cls, KvmsimError)
    assert not hasattr(cls, "exit_code")


@pytest.mark.parametrize("cls", [ProfileError, commands.UsageError, RunError], ids=lambda c: c.__name__)
def test_the_users_input_is_the_exit_2_branch_and_still_a_valueerror(cls: type[Exception]) -> None:
    assert issubclass(cls, InvalidInput) and issubclass(cls, ValueError)


def test_kvm_error_stays_an_oserror_with_the_builtin_subclass() -> None:
    err = KvmError(2, "no such file")
    assert isinstance(err, FileNotFoundError) and isinstance(err, KvmsimError) and err.errno == 2


def test_a_valueerror_from_a_bug_is_not_turned_into_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def buggy(args: argparse.Namespace) -> int:
        raise ValueError("a bug, not the user's input")

    monkeypatch.setattr(commands, "cmd_hosts", buggy)
    with pytest.raises(ValueError, match="a bug"):
        commands.main(["hosts"])


def test_input_the_kernel_refuses_is_still_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert commands.main(["run", "--host", "powervm-p11", "--header", "/nonexistent/kvm.h", "--", "true"]) == 2
    assert "/nonexistent/kvm.h" in capsys.readouterr().err
