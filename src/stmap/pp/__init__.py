"""Preparation shared by tools: conversion, genes, normalisation, patches, features."""

from ._convert import to_spatialdata

__all__ = ["to_spatialdata"]
