"""`ganspection-tf demo`, the README's first command, end to end: synthetic data → train → evaluate → export →
score on the camera runtime, ending on a bundle even when int8 fails the parity gate."""

import json

from cli_support import run_cli

from ganspection_tf import demo, export, ownership


def test_the_demo_ends_on_a_float16_bundle_when_int8_fails_the_parity_gate(tmp_path, capfd, monkeypatch):
    gate = export.apply_gate

    def int8_always_fails(report, out, quantize, force, log):  # what a badly quantised model does
        if quantize == "int8":
            report["auroc_drop"] = 1.0
        gate(report, out, quantize, force, log)

    monkeypatch.setattr(export, "apply_gate", int8_always_fails)
    monkeypatch.setattr(demo, "TRAIN_IMAGES", 40)  # a smaller category: the stages, not the figures, are tested
    monkeypatch.setattr(demo, "TEST_SPLIT", {"n_test_good": 6, "n_test_per_defect": 3})
    code, out, err = run_cli(capfd, "demo", "--out", tmp_path / "demo", "--steps", "2")
    assert code == 0, err
    bundle = tmp_path / "demo" / "bundle"
    assert json.loads((bundle / "metadata.json").read_text())["quantization"] == "float16"
    assert ownership.read_marker(bundle)["kind"] == "bundle"
    assert "parity gate failed" in out and "exporting float16 instead" in out
    assert f"LiteRT float16: {demo.test_images()} images" in out  # every test image, by the bundle it names
