"""Default configuration. Keys follow detectron2's names wherever detectron2 has the key, so one YAML
file serves both engines; keys of our own live under MODEL.SHUFFLENET, MODEL.MOBILENET and the few
engine keys that ``add_shufflenet_config`` also adds to a detectron2 config."""

from fvcore.common.config import CfgNode as CN

_C = CN()
_C.VERSION = 2

# ---------------------------------------------------------------------------- model
_C.MODEL = CN(dict(DEVICE="cpu", META_ARCHITECTURE="GeneralizedRCNN", WEIGHTS="", MASK_ON=False, LOAD_PROPOSALS=False))
# 0-255 scale, INPUT.FORMAT channel order. These suit megvii's weights (BGR, no normalization); pytorchcv's
# want RGB ImageNet mean/std, timm's mobilenetv1_100 RGB mean = std = 127.5.
_C.MODEL.PIXEL_MEAN = [0.0, 0.0, 0.0]
_C.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]

# NAME: "build_shufflenet_v1_backbone" or "build_mobilenet_v1_backbone" (also detectron2 registry names).
# FREEZE_AT (detectron2's): 0 trains everything, 1 freezes the stem, k the stem and k-1 stages after it.
_C.MODEL.BACKBONE = CN(dict(NAME="build_shufflenet_v1_backbone", FREEZE_AT=2))
# NORM: "BN", "FrozenBN" or "SyncBN". OUT_FEATURES: the stride-16 feature for the RPN and RoIAlign, named as
# in detectron2's C4 models.
_C.MODEL.SHUFFLENET = CN(dict(WIDTH_MULT=1.0, GROUPS=3, CHANNEL_SHUFFLE=True, NORM="FrozenBN", OUT_FEATURES=["res4"]))
_C.MODEL.MOBILENET = CN(dict(WIDTH_MULT=1.0, NORM="FrozenBN", OUT_FEATURES=["res4"]))
_C.MODEL.PROPOSAL_GENERATOR = CN(dict(NAME="RPN", MIN_SIZE=0))
_C.MODEL.ANCHOR_GENERATOR = CN(dict(
    NAME="DefaultAnchorGenerator", SIZES=[[32, 64, 128, 256, 512]], ASPECT_RATIOS=[[0.5, 1.0, 2.0]],
    ANGLES=[[-90, 0, 90]], OFFSET=0.0,
))
_C.MODEL.RPN = CN(dict(
    HEAD_NAME="StandardRPNHead", IN_FEATURES=["res4"], BOUNDARY_THRESH=-1, IOU_THRESHOLDS=[0.3, 0.7],
    IOU_LABELS=[0, -1, 1], BATCH_SIZE_PER_IMAGE=256, POSITIVE_FRACTION=0.5,
    BBOX_REG_LOSS_TYPE="smooth_l1", BBOX_REG_LOSS_WEIGHT=1.0, BBOX_REG_WEIGHTS=(1.0, 1.0, 1.0, 1.0),
    SMOOTH_L1_BETA=0.0, LOSS_WEIGHT=1.0,
    PRE_NMS_TOPK_TRAIN=12000, PRE_NMS_TOPK_TEST=6000, POST_NMS_TOPK_TRAIN=2000, POST_NMS_TOPK_TEST=1000,
    NMS_THRESH=0.7, CONV_DIMS=[-1],
))
_C.MODEL.ROI_HEADS = CN(dict(
    NAME="ShuffleNetC4ROIHeads", NUM_CLASSES=80, IN_FEATURES=["res4"], IOU_THRESHOLDS=[0.5], IOU_LABELS=[0, 1],
    BATCH_SIZE_PER_IMAGE=512, POSITIVE_FRACTION=0.25, SCORE_THRESH_TEST=0.05, NMS_THRESH_TEST=0.5,
    PROPOSAL_APPEND_GT=True,
))
# POOLER_TYPE: "ROIAlignV2" (aligned=True, detectron2's C4 default) or "ROIAlign" (torchvision's aligned=False).
_C.MODEL.ROI_BOX_HEAD = CN(dict(
    NAME="", BBOX_REG_LOSS_TYPE="smooth_l1", BBOX_REG_LOSS_WEIGHT=1.0, BBOX_REG_WEIGHTS=(10.0, 10.0, 5.0, 5.0),
    SMOOTH_L1_BETA=0.0, POOLER_RESOLUTION=14, POOLER_SAMPLING_RATIO=0, POOLER_TYPE="ROIAlignV2",
    CLS_AGNOSTIC_BBOX_REG=False,
))

# ---------------------------------------------------------------------------- input and data
_C.INPUT = CN(dict(
    MIN_SIZE_TRAIN=(600,), MIN_SIZE_TRAIN_SAMPLING="choice", MAX_SIZE_TRAIN=1000, MIN_SIZE_TEST=600,
    MAX_SIZE_TEST=1000, RANDOM_FLIP="horizontal", FORMAT="BGR", MASK_FORMAT="polygon",
    CROP=dict(ENABLED=False, TYPE="relative_range", SIZE=[0.9, 0.9]),
))
_C.DATASETS = CN(dict(
    TRAIN=("coco_2017_train",), TEST=("coco_2017_val",), PROPOSAL_FILES_TRAIN=(), PROPOSAL_FILES_TEST=(),
    PRECOMPUTED_PROPOSAL_TOPK_TRAIN=2000, PRECOMPUTED_PROPOSAL_TOPK_TEST=1000,
))
_C.DATALOADER = CN(dict(
    NUM_WORKERS=4, ASPECT_RATIO_GROUPING=True, SAMPLER_TRAIN="TrainingSampler", REPEAT_THRESHOLD=0.0,
    FILTER_EMPTY_ANNOTATIONS=True,
))

# ---------------------------------------------------------------------------- solver
_C.SOLVER = CN(dict(
    LR_SCHEDULER_NAME="WarmupMultiStepLR", MAX_ITER=90000, BASE_LR=0.02, BASE_LR_END=0.0,
    # "SGD" or "AdamW" (ignores MOMENTUM, NESTEROV): from scratch on little data AdamW learns several times
    # faster per image (docs/detection.md).
    OPTIMIZER="SGD", MOMENTUM=0.9, NESTEROV=False, WEIGHT_DECAY=0.0001, WEIGHT_DECAY_NORM=0.0,
    # None means "same as WEIGHT_DECAY" in detectron2; we default to no decay on biases.
    WEIGHT_DECAY_BIAS=0.0, BIAS_LR_FACTOR=1.0,
    GAMMA=0.1, STEPS=(60000, 80000), NUM_DECAYS=3, WARMUP_FACTOR=1.0 / 1000, WARMUP_ITERS=1000,
    WARMUP_METHOD="linear", RESCALE_INTERVAL=False, CHECKPOINT_PERIOD=5000, IMS_PER_BATCH=16,
    REFERENCE_WORLD_SIZE=0, CLIP_GRADIENTS=dict(ENABLED=False, CLIP_TYPE="value", CLIP_VALUE=1.0, NORM_TYPE=2.0),
    AMP=dict(ENABLED=False),
))

# ---------------------------------------------------------------------------- test
_C.TEST = CN(dict(
    EXPECTED_RESULTS=[], EVAL_PERIOD=0, KEYPOINT_OKS_SIGMAS=[], DETECTIONS_PER_IMAGE=100,
    AUG=dict(ENABLED=False, MIN_SIZES=(400, 500, 600, 700, 800, 900, 1000, 1100, 1200), MAX_SIZE=4000, FLIP=True),
    PRECISE_BN=dict(ENABLED=False, NUM_ITER=200),
))

# ---------------------------------------------------------------------------- misc
_C.OUTPUT_DIR = "./output"
_C.SEED = -1
_C.CUDNN_BENCHMARK = False
_C.FLOAT32_PRECISION = ""
_C.VIS_PERIOD = 0
_C.GLOBAL = CN(dict(HACK=1.0))


# Settings of this project's engine that detectron2 has no key for.
_C.SHUFFLENET_DET = CN()
_C.SHUFFLENET_DET.LOG_PERIOD = 20  # iterations between console/metrics lines
_C.SHUFFLENET_DET.AMP_DTYPE = "bfloat16"  # or "float16" (with a gradient scaler), when SOLVER.AMP.ENABLED
# Non-finite losses in a row tolerated (each batch skipped) before training stops.
_C.SHUFFLENET_DET.MAX_BAD_BATCHES = 0
# Images drawn with their detections at the end of training, for a first look.
_C.SHUFFLENET_DET.NUM_VIS_IMAGES = 4
_C.SHUFFLENET_DET.VIS_SCORE_THRESH = 0.5
# Intra-op CPU threads per training process (0: torch's default). On a small CPU machine one thread wins
# when the data loader's workers need the other cores (the quickstart's crop classifier), not when they
# mostly wait (its detector).
_C.SHUFFLENET_DET.TORCH_THREADS = 0
# Periodic checkpoints kept in OUTPUT_DIR, newest first (0 keeps all); model_final.pth is never deleted.
_C.SHUFFLENET_DET.CHECKPOINTS_TO_KEEP = 3
_C.SHUFFLENET_DET.MIN_FREE_DISK_GB = 1.0  # training refuses to start with less free space in OUTPUT_DIR
_C.SHUFFLENET_DET.CHANNELS_LAST = False  # model and 4-D inputs in channels_last (faster convs on recent GPUs)
# Same function, other kernels: "modules" (as built), "folded" (FrozenBN folded into the conv; fastest on
# CPUs), "dense" (folded, grouped 1x1 convs as dense block-diagonal ones with the shuffle absorbed; fastest on
# GPUs) or "auto" (dense for CUDA, else folded). docs/engine.md has the figures.
_C.SHUFFLENET_DET.CONV_IMPL = "auto"
# Train RoIAlign and the per-RoI head on slices of RoIs, recomputed in backward: most of a C4 detector's
# training memory saved for one more head forward. Needs FrozenBN in the head.
_C.SHUFFLENET_DET.RECOMPUTE_BOX_HEAD = False
# "torchvision" (its kernels), "separable" (two small matrix products per RoI, detection/roi_align.py: same
# results, faster backward on CPUs, slow on GPUs) or "auto" (separable for CPU tensors).
_C.SHUFFLENET_DET.ROI_ALIGN_IMPL = "auto"
# Our engine's RPN selection: "torchvision" (per image, NMS over every box) or "batched" (all images at once,
# blocked NMS stopping at POST_NMS_TOPK; the same proposals, detection/proposals.py).
_C.SHUFFLENET_DET.RPN_NMS_IMPL = "torchvision"
_C.SHUFFLENET_DET.DDP_FIND_UNUSED_PARAMETERS = False  # needed when some parameters get no gradient

# ImageNet-style classification (tools/train_cls.py); it also reads MODEL.WEIGHTS, MODEL.PIXEL_MEAN/STD,
# INPUT.FORMAT, INPUT.RANDOM_FLIP, SOLVER.*, TEST.EVAL_PERIOD, DATALOADER.NUM_WORKERS, OUTPUT_DIR, SEED.
_C.CLASSIFICATION = CN()
# Holds TRAIN_SPLIT/ and VAL_SPLIT/, one sub-folder of images per class; empty: $IMAGENET.
_C.CLASSIFICATION.DATASET_ROOT = ""
# Detection datasets, one per split in the order (TRAIN_SPLIT, VAL_SPLIT), whose boxes (plus "background"
# windows) become the classes' images, written to DATASET_ROOT on first use (shufflenet_det.data.box_crops).
_C.CLASSIFICATION.BOX_CROPS_OF = ()
_C.CLASSIFICATION.TRAIN_SPLIT = "train"
_C.CLASSIFICATION.VAL_SPLIT = "val"
_C.CLASSIFICATION.NUM_CLASSES = 1000  # must equal the number of class folders
_C.CLASSIFICATION.LABEL_SMOOTHING = 0.1
# Training: RandomResizedCrop(TRAIN_CROP_SIZE, CROP_SCALE, CROP_RATIO), ColorJitter(*COLOR_JITTER), RANDOM_FLIP.
_C.CLASSIFICATION.TRAIN_CROP_SIZE = 224
_C.CLASSIFICATION.CROP_SCALE = (0.08, 1.0)
_C.CLASSIFICATION.CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_C.CLASSIFICATION.COLOR_JITTER = (0.4, 0.4, 0.4)
# Evaluation: shorter side to TEST_RESIZE_SIZE, center crop TEST_CROP_SIZE ("bilinear" or "bicubic").
_C.CLASSIFICATION.TEST_RESIZE_SIZE = 256
_C.CLASSIFICATION.TEST_CROP_SIZE = 224
_C.CLASSIFICATION.INTERPOLATION = "bilinear"
_C.CLASSIFICATION.TEST_IMS_PER_BATCH = 256  # over all processes, like SOLVER.IMS_PER_BATCH


def add_shufflenet_config(cfg: CN) -> None:
    """Add our own keys (with their defaults) to a config, ours or detectron2's."""
    # detectron2's CfgNode subclasses fvcore's, and yacs refuses to merge YAML into a node of another class.
    node = type(cfg)
    cfg.MODEL.SHUFFLENET = node(_C.MODEL.SHUFFLENET.clone())
    cfg.MODEL.MOBILENET = node(_C.MODEL.MOBILENET.clone())
    cfg.SHUFFLENET_DET = node(_C.SHUFFLENET_DET.clone())
    cfg.CLASSIFICATION = node(_C.CLASSIFICATION.clone())
    if "OPTIMIZER" not in cfg.SOLVER:  # detectron2's yacs config knows SGD only
        cfg.SOLVER.OPTIMIZER = _C.SOLVER.OPTIMIZER


def get_cfg() -> CN:
    """A fresh copy of the defaults."""
    return _C.clone()
