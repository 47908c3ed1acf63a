"""Batched RPN proposal selection: the same proposals as torchvision's per-image loop."""

import pytest
import torch
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import nms

from shufflenet_det.detection.proposals import BatchedProposalRPN, greedy_nms_first_k


def clustered_boxes(images, count, seed):
    """Boxes around a few centers (long chains of overlaps, as RPN proposals have) plus scattered ones."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.rand(images, 6, 2, generator=generator) * 400
    pick = torch.randint(0, 6, (images, count), generator=generator)
    center = centers.gather(1, pick[..., None].expand(-1, -1, 2)) + torch.randn(images, count, 2, generator=generator) * 12
    size = 20 + torch.rand(images, count, 2, generator=generator) * 80
    boxes = torch.cat([center - size / 2, center + size / 2], dim=2)
    scattered = torch.rand(images, count, generator=generator) < 0.2
    boxes[scattered] = boxes[scattered] + torch.rand(int(scattered.sum()), 1, generator=generator) * 300
    return boxes, torch.rand(images, count, generator=generator)


@pytest.mark.parametrize("k, block", [(50, 64), (1000, 64), (30, 1024), (0, 64)])
def test_greedy_nms_first_k_equals_torchvision_nms_per_image(k, block):
    boxes, scores = clustered_boxes(3, 700, seed=k)
    valid = torch.rand(3, 700, generator=torch.Generator().manual_seed(1)) > 0.1
    valid[2] = False  # an image without any box
    valid[1, 350:] = False
    indices, counts = greedy_nms_first_k(boxes, scores, valid, 0.7, k, block=block)
    assert indices.shape == (3, k)
    for image in range(3):
        members = valid[image].nonzero().flatten()
        expected = members[nms(boxes[image, members], scores[image, members], 0.7)][:k]
        assert torch.equal(indices[image, : counts[image]], expected)
    assert counts[2] == 0 and (k == 0 or counts[1] <= 350)


def test_greedy_nms_first_k_keeps_float64_precision():
    boxes, scores = clustered_boxes(2, 300, seed=7)
    boxes, scores = boxes.double(), scores.double()
    indices, counts = greedy_nms_first_k(boxes, scores, torch.ones(2, 300, dtype=torch.bool), 0.5, 300, block=64)
    for image in range(2):
        assert torch.equal(indices[image, : counts[image]], nms(boxes[image], scores[image], 0.5))


def test_greedy_nms_first_k_resolves_a_long_chain_of_overlaps():
    # Each box overlaps only its neighbours, scores falling along the chain: greedy NMS keeps every
    # other box, which the within-block rule reaches only after many rounds.
    offsets = torch.arange(200, dtype=torch.float32)[:, None] * 10
    boxes = torch.cat([offsets, torch.zeros(200, 1), offsets + 100, torch.full((200, 1), 100.0)], dim=1)[None]
    scores = torch.linspace(1, 0, 200)[None]
    indices, counts = greedy_nms_first_k(boxes, scores, torch.ones(1, 200, dtype=torch.bool), 0.8, 200, block=128)
    expected = nms(boxes[0], scores[0], 0.8)
    assert torch.equal(indices[0, : counts[0]], expected) and len(expected) < 200


def _rpn(cls, post_nms=40):
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.rpn import RPNHead

    return cls(
        AnchorGenerator(((32, 64),), ((0.5, 1.0),)), RPNHead(8, 4), 0.7, 0.3, 64, 0.5,
        dict(training=2000, testing=2000), dict(training=post_nms, testing=post_nms), 0.7, score_thresh=0.05,
    )


@pytest.mark.parametrize("early_stop, ties, post_nms", [(False, False, 40), (True, False, 40), (True, False, 2000),
                                                        (True, True, 40), (True, True, 2000)])
def test_batched_rpns_select_the_same_proposals_as_torchvisions(early_stop, ties, post_nms):
    from shufflenet_det.deploy.detector import EarlyStopRPN

    generator = torch.Generator().manual_seed(3)
    num_images, anchors = 3, 1500  # over 1000 boxes: torchvision's NMS orders its result with an unstable sort
    corners = torch.rand(num_images, anchors, 2, generator=generator) * torch.tensor([130.0, 90.0]) - 10
    sizes = torch.rand(num_images, anchors, 2, generator=generator) * 60
    sizes[:, :20] = 1e-4  # boxes under min_size are dropped
    proposals = torch.cat([corners, corners + sizes], dim=2)
    objectness = torch.randn(num_images * anchors, 1, generator=generator) * 3
    if ties:  # an untrained RPN: every objectness sigmoid is 0.5 (EarlyStopRPN keeps torchvision's order then too)
        objectness = torch.zeros_like(objectness)
    image_shapes = [(80, 120), (64, 100), (90, 70)]
    batched = _rpn(EarlyStopRPN if early_stop else BatchedProposalRPN, post_nms)
    expected = _rpn(RegionProposalNetwork, post_nms).filter_proposals(proposals, objectness, image_shapes, [anchors])
    found = batched.filter_proposals(proposals, objectness, image_shapes, [anchors])
    for (boxes, scores), (want_boxes, want_scores) in zip(zip(*found), zip(*expected)):
        assert len(want_boxes) == 40 if post_nms == 40 else 40 < len(want_boxes) < anchors
        assert torch.equal(boxes, want_boxes) and torch.equal(scores, want_scores)
