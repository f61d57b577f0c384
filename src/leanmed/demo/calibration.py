"""A cheap check of the generated data's difficulty: a fixed logistic model on two image features, at each scale S.

Training the demo's CNN takes minutes; this takes seconds. It draws RSNA images as the generator does (pixels only, no
DICOM coding), takes them through the preprocessing's own crop, resize and padding to the training size, downsamples
them by S as training does (leanmed.data.images.downsample), and fits a logistic regression on two fixed features:

* fine detail: the mean of the 8 largest positive responses of a 3x3 top-hat (pixel minus its 3x3 neighbourhood mean)
  inside the breast, which sees calcifications one or two pixels across;
* brightness: the mean grey level inside the breast, which sees breast density (the coarse cue).

Balanced accuracy is measured on held-out subjects (a subject-level half split). The generator is calibrated when at
S = 1 the model lands in the band the demo's CNN is meant to reach, and at S = 4 (where a calcification is far
smaller than a pooled pixel) it loses most of it. The model is a floor for a CNN, not its forecast: the CNN sees more
than two features, but also has to learn them from a few hundred images.

Command line (prints balanced accuracy per scale)::

    python -m leanmed.demo.calibration --subjects 300 --image-size 32
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from leanmed.data.breast import area_resize, crop_to_breast, fitted_size, pad_to_square
from leanmed.data.images import downsample
from leanmed.demo.mammogram import RsnaDifficulty, draw_subject_appearance, mammogram_pixels
from leanmed.demo.rsna import RSNA_BENIGN_SHARE_OF_NEGATIVES

#: Views drawn per subject (one of each breast, as the smallest real examinations have).
VIEWS = (("L", "CC"), ("R", "MLO"))


@dataclass(frozen=True)
class CalibrationResult:
    """Balanced accuracy (held-out subjects) of the fixed logistic model at each downsampling scale."""

    balanced_accuracy: dict  # scale -> balanced accuracy
    n_images: int
    n_subjects: int


def training_images(
    n_subjects: int,
    difficulty: RsnaDifficulty,
    image_size: int = 32,
    shape: tuple[int, int] = (192, 152),
    followup_fraction: float = 0.35,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``n_subjects`` subjects' images and take them to training form.

    Returns (images N x image_size x image_size float32 in [0, 1], labels N (1 = follow-up needed), subject index N).
    The display window is the generator's linear window (from just above the background to twice the tissue level).
    """
    rng = np.random.default_rng(seed)
    images, labels, subjects = [], [], []
    for subject_index in range(n_subjects):
        followup = bool(rng.random() < followup_fraction)
        appearance = draw_subject_appearance(rng, followup, difficulty)
        benign = RSNA_BENIGN_SHARE_OF_NEGATIVES
        birads = 0.0 if followup else float(rng.choice([1.0, 2.0], p=[1 - benign, benign]))
        for laterality, view in VIEWS:
            pixels, tissue_level = mammogram_pixels(
                rng, shape[0], shape[1], laterality, view, birads, appearance, difficulty
            )
            low, high = 250.0, 2.0 * tissue_level
            display = np.clip((pixels.astype(np.float32) - low) / (high - low), 0.0, 1.0)
            breast = crop_to_breast(display).image
            resized = area_resize(breast, fitted_size(*breast.shape, image_size))
            if laterality == "R":
                resized = resized[:, ::-1]
            images.append(pad_to_square(np.ascontiguousarray(resized), fill=0.0, anchor="left"))
            labels.append(int(followup))
            subjects.append(subject_index)
    return np.stack(images).astype(np.float32), np.array(labels), np.array(subjects)


def image_features(images: np.ndarray) -> np.ndarray:
    """N x 2 features (fine detail, brightness) of N images in [0, 1]; see the module docstring."""
    tensor = torch.from_numpy(images)[:, None]
    neighbourhood = F.avg_pool2d(F.pad(tensor, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    top_hat = (tensor - neighbourhood).clamp(min=0).flatten(1)
    breast = (tensor > 0.02).flatten(1)
    fine = torch.where(breast, top_hat, torch.zeros_like(top_hat)).topk(8, dim=1).values.mean(dim=1)
    brightness = (tensor.flatten(1) * breast).sum(1) / breast.sum(1).clamp(min=1)
    return torch.stack([fine, brightness], dim=1).numpy().astype(np.float64)


def fit_logistic(features: np.ndarray, labels: np.ndarray, iterations: int = 50, ridge: float = 1e-3) -> np.ndarray:
    """Weights (intercept first) of a class-balanced logistic regression, fitted by Newton's method on standardised
    features; returns them for the raw features."""
    mean, std = features.mean(0), features.std(0) + 1e-12
    design = np.column_stack([np.ones(len(labels)), (features - mean) / std])
    class_weight = np.where(labels == 1, 0.5 / max(labels.mean(), 1e-12), 0.5 / max(1 - labels.mean(), 1e-12))
    weights = np.zeros(design.shape[1])
    for _ in range(iterations):
        probability = 1.0 / (1.0 + np.exp(-design @ weights))
        gradient = design.T @ (class_weight * (probability - labels)) + ridge * weights
        hessian = (design * (class_weight * probability * (1 - probability))[:, None]).T @ design
        hessian += ridge * np.eye(len(weights))
        weights -= np.linalg.solve(hessian, gradient)
    raw = weights[1:] / std
    return np.concatenate([[weights[0] - raw @ mean], raw])


def balanced_accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Mean of sensitivity and specificity."""
    return float(np.mean([np.mean(predicted[labels == value] == value) for value in (0, 1)]))


def calibrate(
    n_subjects: int = 300,
    difficulty: RsnaDifficulty | None = None,
    image_size: int = 32,
    scales: tuple[int, ...] = (1, 2, 4),
    seed: int = 0,
) -> CalibrationResult:
    """Balanced accuracy of the fixed logistic model at each scale, fitted on half the subjects, tested on the rest."""
    difficulty = difficulty if difficulty is not None else RsnaDifficulty()
    images, labels, subjects = training_images(n_subjects, difficulty, image_size=image_size, seed=seed)
    held_out = subjects % 2 == 1
    accuracy = {}
    for scale in scales:
        scaled = downsample(torch.from_numpy(images)[:, None], scale, "pooled_upsampled")[:, 0].numpy()
        features = image_features(scaled)
        weights = fit_logistic(features[~held_out], labels[~held_out])
        predicted = (weights[0] + features[held_out] @ weights[1:] > 0).astype(int)
        accuracy[scale] = balanced_accuracy(labels[held_out], predicted)
    return CalibrationResult(balanced_accuracy=accuracy, n_images=len(labels), n_subjects=n_subjects)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leanmed.demo.calibration", description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    for field, default in RsnaDifficulty.__dataclass_fields__.items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=float, default=default.default)
    args = parser.parse_args(argv)
    difficulty = RsnaDifficulty(**{field: getattr(args, field) for field in RsnaDifficulty.__dataclass_fields__})
    result = calibrate(args.subjects, difficulty, image_size=args.image_size, seed=args.seed)
    scores = ", ".join(f"S={scale}: {value:.3f}" for scale, value in result.balanced_accuracy.items())
    print(f"fixed logistic model, {result.n_images} images of {result.n_subjects} subjects, {difficulty}: "
          f"balanced accuracy on held-out subjects {scores}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
