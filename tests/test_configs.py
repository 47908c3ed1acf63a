"""Config loading: name resolution, _BASE_ inheritance, overrides, and the errors users see."""

import pytest

from shufflenet_det.config import (
    ConfigError,
    config_dir,
    list_configs,
    load_config,
    resolve_config_path,
    split_trailing_overrides,
)

SHIPPED = [
    "Base-ShuffleNet-C4",
    "mobilenet_v1_frcnn",
    "mobilenet_v1_frcnn_300",
    "quickstart",
    "shufflenet_1x_frcnn",
    "shufflenet_1x_frcnn_300",
    "shufflenet_2x_frcnn",
    "shufflenet_2x_frcnn_300",
]


def test_shipped_configs_are_listed():
    assert list_configs() == SHIPPED


def test_bare_name_resolves_with_or_without_suffix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the configs folder is found beside the package, not in the cwd
    assert resolve_config_path("quickstart") == config_dir() / "quickstart.yaml"
    assert resolve_config_path("quickstart.yaml") == config_dir() / "quickstart.yaml"
    assert load_config("quickstart") == load_config("quickstart.yaml")
    assert load_config(config_dir() / "quickstart.yaml") == load_config("quickstart")


def test_loaded_config_is_frozen():
    cfg = load_config("quickstart")
    with pytest.raises(AttributeError):
        cfg.SOLVER.BASE_LR = 1.0


def test_base_inheritance_chain():
    cfg = load_config("shufflenet_2x_frcnn_300")
    assert cfg.INPUT.MIN_SIZE_TRAIN == (300,) and cfg.INPUT.MAX_SIZE_TEST == 500  # its own
    assert cfg.MODEL.SHUFFLENET.WIDTH_MULT == 2.0 and cfg.INPUT.FORMAT == "BGR"  # from shufflenet_2x_frcnn
    assert cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE == "ROIAlignV2"  # from Base-ShuffleNet-C4
    assert cfg.SOLVER.STEPS == (60000, 80000) and cfg.SOLVER.MAX_ITER == 90000


def test_base_in_own_folder_and_override_order(tmp_path):
    (tmp_path / "base.yaml").write_text("SOLVER:\n  BASE_LR: 0.5\n  MAX_ITER: 7\n")
    (tmp_path / "child.yaml").write_text('_BASE_: "base.yaml"\nSOLVER:\n  MAX_ITER: 9\n')
    cfg = load_config(tmp_path / "child.yaml", ["SOLVER.BASE_LR", "0.25", "INPUT.MIN_SIZE_TRAIN", "(320, 352)"])
    assert cfg.SOLVER.MAX_ITER == 9
    assert cfg.SOLVER.BASE_LR == 0.25
    assert cfg.INPUT.MIN_SIZE_TRAIN == (320, 352)


def test_overrides_parse_literals_and_keep_strings():
    cfg = load_config("quickstart", ["MODEL.WEIGHTS", "weights/x.pth", "MODEL.BACKBONE.FREEZE_AT", "1",
                                     "DATASETS.TRAIN", "('a', 'b')", "MODEL.SHUFFLENET.CHANNEL_SHUFFLE", "False"])
    assert cfg.MODEL.WEIGHTS == "weights/x.pth"
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 1
    assert cfg.DATASETS.TRAIN == ("a", "b")
    assert cfg.MODEL.SHUFFLENET.CHANNEL_SHUFFLE is False


def test_unknown_override_key_names_nearest():
    expected = r"unknown config key 'SOLVER\.BASE_LRR' in the overrides; nearest valid key: SOLVER\.BASE_LR$"
    with pytest.raises(ConfigError, match=expected):
        load_config("quickstart", ["SOLVER.BASE_LRR", "0.1"])
    with pytest.raises(ConfigError, match="nearest valid key: SOLVER.BASE_LR$"):
        load_config("quickstart", ["MODEL.BASE_LR", "0.1"])


def test_unknown_yaml_key_names_file_and_nearest(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text('_BASE_: "%s"\nMODEL:\n  ROI_HEADS:\n    NUM_CLASS: 3\n' % (config_dir() / "quickstart.yaml"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "'MODEL.ROI_HEADS.NUM_CLASS'" in message and str(path) in message
    assert message.endswith("nearest valid key: MODEL.ROI_HEADS.NUM_CLASSES")
    assert "\n" not in message


def test_bad_override_value_and_odd_list():
    with pytest.raises(ConfigError, match="SOLVER.MAX_ITER"):
        load_config("quickstart", ["SOLVER.MAX_ITER", "many"])
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        load_config("quickstart", ["SOLVER.MAX_ITER"])


def test_missing_config_lists_available():
    with pytest.raises(ConfigError) as info:
        load_config("shufflenet_3x_frcnn")
    message = str(info.value)
    assert "'shufflenet_3x_frcnn' not found" in message
    assert all(name in message for name in SHIPPED)


def test_broken_yaml_is_one_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("MODEL: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot read config") as info:
        load_config(path)
    assert "\n" not in str(info.value) and "(line 2, column 1)" in str(info.value)
    path.write_text("\n  \n")
    with pytest.raises(ConfigError, match=f"^config {path} is empty$"):
        load_config(path)


def test_options_typed_after_the_overrides_are_named():
    # argparse's REMAINDER hands them to the overrides, where they would be misread as keys or values.
    with pytest.raises(ConfigError, match="'--num-gpus' came after the KEY VALUE overrides"):
        load_config("quickstart", ["SOLVER.MAX_ITER", "2", "--num-gpus", "2"])
    with pytest.raises(ConfigError, match="'--resume' came after"):
        load_config("quickstart", ["OUTPUT_DIR", "--resume"])
    assert load_config("quickstart", ["SOLVER.BASE_LR", "-0.5"]).SOLVER.BASE_LR == -0.5  # one dash is a value


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_set_only_valid_values(name):
    cfg = load_config(name)
    assert cfg.INPUT.FORMAT in ("BGR", "RGB")
    assert cfg.MODEL.RPN.IN_FEATURES == cfg.MODEL.ROI_HEADS.IN_FEATURES == ["res4"]
    assert cfg.SOLVER.WARMUP_ITERS < cfg.SOLVER.STEPS[0] <= cfg.SOLVER.STEPS[-1] < cfg.SOLVER.MAX_ITER


def test_paper_configs_match_weight_sources():
    from shufflenet_det.weights import find_pretrained

    for name, weights, source, arch in (
        ("shufflenet_2x_frcnn", "weights/shufflenet_v1_x2_0_g3-megvii.pth", "megvii", "shufflenet_v1_x2_0_g3"),
        ("shufflenet_1x_frcnn_300", "weights/shufflenet_v1_x1_0_g3-megvii.pth", "megvii", "shufflenet_v1_x1_0_g3"),
        ("mobilenet_v1_frcnn", "weights/mobilenet_v1_x1_0-timm.pth", "timm", "mobilenet_v1_x1_0"),
    ):
        cfg = load_config(name)
        # The preprocessing the config feeds is the one the published weights were trained with.
        expected = find_pretrained(source, arch).meta()
        assert cfg.MODEL.WEIGHTS == weights and cfg.INPUT.FORMAT == expected["input_format"]
        assert list(cfg.MODEL.PIXEL_MEAN) == pytest.approx(expected["pixel_mean"])
        assert list(cfg.MODEL.PIXEL_STD) == pytest.approx(expected["pixel_std"])

def test_overrides_typed_after_a_list_option_are_split_off(tmp_path):
    values = ["a.jpg", "IMG.JPG", "photos/", "INPUT.MIN_SIZE_TEST", "192", "MODEL.NO_SUCH", "1"]
    assert split_trailing_overrides(values) == (
        ["a.jpg", "IMG.JPG", "photos/"], ["INPUT.MIN_SIZE_TEST", "192", "MODEL.NO_SUCH", "1"]
    )
    assert split_trailing_overrides(["x.png", "y.png"]) == (["x.png", "y.png"], [])
    assert split_trailing_overrides(["x.png", "OUTPUT_DIR", "out"]) == (["x.png"], ["OUTPUT_DIR", "out"])
    existing = tmp_path / "TEST.jpg"  # named like a config section, but a file
    existing.write_bytes(b"")
    assert split_trailing_overrides([str(existing), "SEED", "1"]) == ([str(existing)], ["SEED", "1"])
