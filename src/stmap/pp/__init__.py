"""Preparation shared by tools: conversion, genes, normalisation, patches, features."""

from ._blobs import detect_blobs
from ._convert import to_spatialdata
from ._extractors import (
    handcrafted_feature_names,
    handcrafted_features,
    timm_extractor,
    torch_extractor,
    torchvision_extractor,
)
from ._histology import histology_features
from ._register import align_sections, apply_transform, fit_transform, icp, register
from ._stack import disc_iou, graph_arrays, spot_graph_3d, stack_sections
from ._tissue import detect_tissue, tissue_mask
from ._units import coordinate_units

__all__ = [
    "to_spatialdata",
    "coordinate_units",
    "histology_features",
    "detect_blobs",
    "detect_tissue",
    "tissue_mask",
    "register",
    "align_sections",
    "fit_transform",
    "icp",
    "apply_transform",
    "stack_sections",
    "spot_graph_3d",
    "graph_arrays",
    "disc_iou",
    "handcrafted_features",
    "handcrafted_feature_names",
    "torch_extractor",
    "timm_extractor",
    "torchvision_extractor",
]
