"""Lesson 08: the grid image encoder, a vision tower for any images (photos too).

Lesson 04's object detector (`detector.ObjectImageEncoder`) gives one token per object,
but it learns from scenes with known objects, so it is for ShapeWorld only. For other
images the multimodal model learns its own encoder: `GridImageEncoder` turns an image into
one feature token per region (a grid of cells), trained with the model
(``MLLMConfig(vision="grid")``).

=============================  =============================================================
name                           what it does
=============================  =============================================================
`GridImageEncoder`             images -> a grid of feature tokens (the core class)
`GridCoordinates`              the initial position table: column and row readable linearly
`grid_coordinate_features`     each cell's column and row (and their sines and cosines)
=============================  =============================================================
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
from keras import ops

from mmlm_course.encoders import ConvImageEncoder, PositionEmbedding, patchify
from mmlm_course.validation import int_tuple, positive_int, require_array_budget, require_int

__all__ = ["GridImageEncoder", "GridCoordinates", "grid_coordinate_features"]

_register = keras.saving.register_keras_serializable(package="mmlm_course")


@_register
class GridImageEncoder(keras.layers.Layer):
    """Images -> a grid of feature tokens, one per image region.

    1. a space-to-depth stem (lesson 03's `patchify` with ``stem x stem`` patches, reshaped
       back into a grid: (B, H, W, 3) -> (B, H/stem, W/stem, 3 stem^2), no pixel lost)
       makes every later convolution ``stem^2`` times cheaper;
    2. with ``coordinates=True`` two channels hold each pixel's column and row (CoordConv),
       so features can say where a shape is;
    3. lesson 03's `ConvImageEncoder` with ``output="tokens"``: one token per cell of the
       last feature map;
    4. a learned position per cell (lesson 03's `PositionEmbedding`, started from
       `GridCoordinates` so that column and row are readable from the first step).

    Input float (B, H, W, 3) (standardised pixels); output float (B, grid * grid,
    embed_dim) with ``grid = H / stem / 2**len(filters)``, in reading order.
    """

    def __init__(self, image_size: int = 64, filters: Sequence[int] = (32, 64, 64), embed_dim: int = 64,
                 stem: int = 2, coordinates: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.image_size = positive_int(image_size, "image_size")
        self.filters = int_tuple(filters, "filters")
        self.embed_dim = positive_int(embed_dim, "embed_dim")
        self.stem = positive_int(stem, "stem")
        side = self.image_size // self.stem
        if self.image_size % self.stem or side % 2 ** len(self.filters):
            raise ValueError(f"image_size={image_size} must be divisible by stem * 2**len(filters) = "
                             f"{self.stem * 2 ** len(self.filters)}.")
        self.grid_size = side // 2 ** len(self.filters)
        self.num_tokens = self.grid_size ** 2
        self.coordinates = bool(coordinates)
        self.channels = 3 * self.stem ** 2 + 2 * int(self.coordinates)
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: 3})
        self.convolutions = ConvImageEncoder(self.filters, embed_dim=self.embed_dim, output="tokens",
                                             channels=self.channels, name="convolutions", dtype=self.dtype_policy)
        self.positions = PositionEmbedding(self.num_tokens, self.embed_dim, name="positions",
                                           initializer=GridCoordinates(self.grid_size), dtype=self.dtype_policy)

    def build(self, input_shape):
        side = self.image_size // self.stem
        self.convolutions.build((None, side, side, self.channels))
        self.positions.build((None, self.num_tokens, self.embed_dim))

    def space_to_depth(self, images):
        """(B, H, W, 3) -> (B, H / stem, W / stem, 3 * stem^2): each stem x stem patch becomes one pixel."""
        if self.stem == 1:
            return images
        side = self.image_size // self.stem
        return ops.reshape(patchify(images, self.stem), (-1, side, side, 3 * self.stem ** 2))

    def add_coordinates(self, x):
        """(B, h, w, C) -> (B, h, w, C + 2): append each pixel's column and row, scaled to
        [-1, 1] (CoordConv), so the features can say *where* a shape is, not only *what*."""
        side = self.image_size // self.stem
        steps = ops.linspace(-1.0, 1.0, side)
        columns = ops.broadcast_to(ops.reshape(steps, (1, 1, side, 1)), (1, side, side, 1))
        rows = ops.broadcast_to(ops.reshape(steps, (1, side, 1, 1)), (1, side, side, 1))
        grid = ops.cast(ops.concatenate([columns, rows], axis=-1), x.dtype)          # (1, h, w, 2)
        return ops.concatenate([x, ops.broadcast_to(grid, (ops.shape(x)[0], side, side, 2))], axis=-1)

    def call(self, images):
        x = self.space_to_depth(images)
        if self.coordinates:
            x = self.add_coordinates(x)
        return self.positions(self.convolutions(x))                    # (B, grid * grid, embed_dim)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_tokens, self.embed_dim)

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size, "filters": list(self.filters),
                "embed_dim": self.embed_dim, "stem": self.stem, "coordinates": self.coordinates}


def grid_coordinate_features(grid_size: int) -> np.ndarray:
    """float32 (grid_size**2, 6): for each cell in reading order its column x and row y
    in [-1, 1], then sin(pi x), sin(pi y), cos(pi x), cos(pi y)."""
    require_array_budget((positive_int(grid_size, "grid_size"),) * 2, 64, "grid_size")
    steps = np.linspace(-1.0, 1.0, grid_size)
    rows, columns = np.meshgrid(steps, steps, indexing="ij")
    xy = np.stack([columns.ravel(), rows.ravel()], axis=1)
    return np.concatenate([xy, np.sin(np.pi * xy), np.cos(np.pi * xy)], axis=1).astype(np.float32)


@_register
class GridCoordinates(keras.initializers.Initializer):
    """Initial values for a grid's position table (``grid_size**2``, D) from which each
    cell's column and row can be read off linearly: `grid_coordinate_features` times a
    random (6, D) matrix, times ``scale``.

    Why not small random values? A relation such as "the circle is to the left of the
    square" compares two positions. With a random table the positions must first be
    learned, from the relational examples alone; with this one they are there from the
    first step (still trainable). ``scale=0.2`` gives rows of about the norm of the
    encoder's features at initialisation.
    """

    def __init__(self, grid_size: int, scale: float = 0.2, seed: int | None = None):
        self.grid_size = positive_int(grid_size, "grid_size")
        self.scale = float(scale)
        self.seed = None if seed is None else require_int(seed, "seed")

    def __call__(self, shape, dtype=None):
        cells = self.grid_size ** 2
        if len(shape) != 2 or shape[0] != cells:
            raise ValueError(f"GridCoordinates({self.grid_size}) makes a ({cells}, D) table, asked for {tuple(shape)}.")
        mixing = keras.random.normal((6, shape[1]), seed=self.seed, dtype=dtype or "float32")
        features = ops.convert_to_tensor(grid_coordinate_features(self.grid_size), dtype=mixing.dtype)
        return ops.matmul(features, mixing) * self.scale

    def get_config(self):
        return {"grid_size": self.grid_size, "scale": self.scale, "seed": self.seed}
