"""Opt-in registration of our models with torchvision's model builder API."""

import pytest
import torch
import torchvision

from shufflenet_det import list_models
from shufflenet_det.detection import DETECTION_MODELS
from shufflenet_det.integrations.torchvision_models import register_torchvision_models
from shufflenet_det.weights import model_structure, save_weights


def test_get_model_builds_ours_after_registration(tmp_path):
    names = register_torchvision_models()
    assert names == list_models() + list(DETECTION_MODELS)
    assert register_torchvision_models() == names  # a second call changes nothing
    assert set(names) <= set(torchvision.models.list_models())
    model = torchvision.models.get_model("shufflenet_v1_x0_5_g3", num_classes=10, norm="FrozenBN")
    assert model.arch == "shufflenet_v1_x0_5_g3" and model.fc.out_features == 10

    source = torchvision.models.get_model("mobilenet_v1_x0_25", activation="relu6").eval()
    path = save_weights(tmp_path / "m.pth", source.state_dict(), model_structure(source))
    loaded = torchvision.models.get_model("mobilenet_v1_x0_25", weights=str(path)).eval()
    assert loaded.activation == "relu6"
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))


def test_a_foreign_model_under_our_name_is_not_replaced(monkeypatch):
    from torchvision.models import _api

    monkeypatch.setattr(_api, "BUILTIN_MODELS", {"shufflenet_v1_x1_0_g3": lambda **kwargs: None})
    with pytest.raises(RuntimeError, match="already has a different model registered as 'shufflenet_v1_x1_0_g3'"):
        register_torchvision_models()
    assert list(_api.BUILTIN_MODELS) == ["shufflenet_v1_x1_0_g3"]  # nothing else registered
