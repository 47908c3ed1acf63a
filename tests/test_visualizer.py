"""Drawn detections: boxes and labels stay readable inside the image."""

import numpy as np

from shufflenet_det.utils.visualizer import class_color, draw_detections


def test_label_at_the_right_edge_moves_inside_the_image():
    image = np.zeros((100, 200, 3), np.uint8)
    drawn = draw_detections(image, np.array([[170.0, 40.0, 199.0, 60.0]]), [0], [0.9], ["a_long_class_name"])
    label_columns = np.all(drawn[20:40] == class_color(0), axis=2).any(axis=0)  # the label sits above the box
    # Wider than the box: it starts left of the box and ends at the image's edge instead of past it.
    assert label_columns[:170].any() and label_columns[-1]


def test_boxes_below_the_threshold_are_not_drawn():
    image = np.zeros((60, 60, 3), np.uint8)
    boxes = np.array([[5.0, 20.0, 25.0, 50.0], [35.0, 20.0, 55.0, 50.0]])
    drawn = draw_detections(image, boxes, [0, 1], [0.9, 0.2], ["a", "b"], score_threshold=0.5)
    assert drawn[30:45, 5].any(axis=1).all()  # the first box's left side
    assert not drawn[25:50, 35:].any()  # the second box and its label, below the threshold
