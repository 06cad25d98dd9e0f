"""Health warnings (issue 13): each check fires on the doubtful side of its threshold only."""

from __future__ import annotations

from labelkit import health


def test_separation_warns_near_chance_only():
    assert health.separation(0.2, 10, what="x")[0]["code"] == "poor_separation"
    assert health.separation(0.8, 10, what="x") == []
    # 2 classes: chance is 0.5, so 0.6 is only 20% of the way to perfect.
    assert health.separation(0.6, 2, what="x")[0]["code"] == "poor_separation"
    assert health.separation(None, 10, what="x") == []


def test_above_chance_scale():
    assert health.above_chance(0.1, 10) == 0.0
    assert health.above_chance(1.0, 10) == 1.0


def test_dropped_noise_accepted_one_class_student():
    assert health.dropped(34, 100, by="seed cleaning", option="--no-clean-seeds")[0]["code"] == "many_dropped_seed_cleaning"
    assert health.dropped(33, 100, by="seed cleaning", option="--no-clean-seeds") == []
    assert health.noise_rate(0.31)[0]["code"] == "high_noise_rate"
    assert health.noise_rate(0.30) == []
    assert health.none_accepted(0, 10)[0]["code"] == "none_accepted"
    assert health.none_accepted(1, 10) == [] and health.none_accepted(0, 0) == []
    assert health.one_class(1)[0]["code"] == "one_class" and health.one_class(2) == []
    codes = [w["code"] for w in health.student(0.15, 0.3, 10)]
    assert codes == ["poor_student_accuracy", "poor_student_calibration"]
    assert health.student(0.95, 0.05, 10) == []


def test_every_warning_has_code_message_and_hint():
    for w in health.separation(0.1, 10, what="x") + health.noise_rate(0.9) + health.student(0.1, 0.9, 10):
        assert set(w) == {"code", "message", "hint"} and all(w.values())
