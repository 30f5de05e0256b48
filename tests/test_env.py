import pytest

from mmlm_course import env


def test_report_has_versions_devices_and_no_warnings_here():
    report = env.environment_report()
    assert report["versions"]["keras"].startswith("3.")
    assert report["devices"] and report["devices"][0].startswith("cpu")
    assert report["warnings"] == []
    text = env.format_report(report)
    assert "keras" in text and "Colab" in text


def test_warns_about_legacy_keras(monkeypatch):
    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "1")
    assert any("TF_USE_LEGACY_KERAS" in w for w in env.environment_report()["warnings"])


@pytest.mark.parametrize("distribution,version,expected", [
    ("tensorflow", "2.15.1", "older than the course's floor"),
    ("tensorflow", None, "TensorFlow is not installed"),
    ("keras", "2.15.0", "Keras 3 is expected"),
    ("tf-keras", "2.16.0", "tf-keras 2.16.0 (Keras 2) is installed"),
])
def test_warns_about_known_bad_versions(monkeypatch, distribution, version, expected):
    monkeypatch.delenv("TF_USE_LEGACY_KERAS", raising=False)
    good = {"tensorflow": "2.21.0", "keras": "3.11.0", "tf-keras": None}
    assert env.version_warnings(good) == []
    warnings = env.version_warnings({**good, distribution: version})
    assert len(warnings) == 1 and expected in warnings[0]


def test_colab_detection(monkeypatch):
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-2026")
    assert env.in_colab()
