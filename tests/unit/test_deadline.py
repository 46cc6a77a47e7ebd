"""run.time_limit: the durations it reads, the Slurm job's end when unset, and when the next step and a
save no longer fit."""

import time

import pytest

from tulu_mcore.config.durations import parse_duration
from tulu_mcore.errors import UserError
from tulu_mcore.training.deadline import MARGIN_S, Deadline, slurm_end_time


@pytest.mark.parametrize("text,seconds", [(90, 90), ("90", 90), ("1:30", 90), ("01:00:00", 3600),
                                          ("1-12:00:00", 129600), ("0:45", 45)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text,seconds", [("90", 5400), ("1:30", 90), ("04:00:00", 14400), ("2-00:00:00", 172800),
                                          ("1-12", 129600), ("1-12:30", 131400)])
def test_slurm_durations(text, seconds):  # Slurm's --time: a bare number is minutes
    assert parse_duration(text, "launcher.time", slurm=True) == seconds


@pytest.mark.parametrize("bad", ["soon", "1:2:3:4", "-5", "1h"])
def test_bad_duration_is_one_clear_error(bad):
    with pytest.raises(UserError, match="run.time_limit"):
        parse_duration(bad)


def test_slurm_end_time_from_the_job(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_JOB_END_TIME", raising=False)
    assert slurm_end_time() is None and Deadline(None, time.time()).end is None
    monkeypatch.setenv("SLURM_JOB_END_TIME", "2000000000")
    d = Deadline(None, time.time())
    assert d.end == 2_000_000_000 and d.source == "the Slurm job's time limit"


def test_too_close_counts_a_step_and_a_save():
    d = Deadline(100, time.time() - 50)  # 50 s left
    assert not d.too_close(10.0)  # 10 + 10 + margin fits
    d.saved(35.0)
    assert d.too_close(10.0)  # 10 + 35 + margin does not
    assert 50 - d.left() < 2 and MARGIN_S > 0


def test_a_resume_refuses_a_changed_data_order_and_applies_a_new_lr():
    from tulu_mcore.config.compose import compose
    from tulu_mcore.training.resume import check_changes, snapshot

    saved = snapshot(compose(["recipe=sft", "train.global_batch_size=32", "optim.lr=1e-5"]))
    with pytest.raises(UserError) as e:
        check_changes(saved, compose(["recipe=sft", "train.global_batch_size=16"]), "ckpt")
    msg = str(e.value)
    assert "train.global_batch_size: 32 -> 16" in msg and "run.allow_changes=[train.global_batch_size]" in msg
    lines = check_changes(saved, compose(["recipe=sft", "train.global_batch_size=16", "optim.lr=1e-6",
                                          "run.allow_changes=[train.global_batch_size]"]), "ckpt")
    assert lines == ["train.global_batch_size changed on resume: 32 -> 16",
                     "optim.lr changed on resume: 1e-05 -> 1e-06, from this step on"]
    assert check_changes(None, compose(["recipe=sft"]), "ckpt") == []  # a checkpoint from before
