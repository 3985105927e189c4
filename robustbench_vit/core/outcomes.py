"""Per-example outcomes of a cell: which images of its data slice a proportion counted, as a
compact bitmap that crosses processes and is stored with the row.

Positions are those of the cell's evaluated slice (`data.datasets.subset_indices` of the dataset,
in order), identified by the slice's key (dataset, its fields, n_examples, batch size, seed): two
rows with the same key count the same images, so they can be compared image by image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, kw_only=True)
class ExampleBits:
    """Outcomes (True: counted) of positions start .. start+len(bits)-1 of slice `data`."""

    data: str
    start: int
    bits: np.ndarray

    def encode(self) -> str:
        """"<data>:<start>:<n>:<hex of the packed bits>"."""
        packed = np.packbits(self.bits.astype(bool)).tobytes().hex()
        return f"{self.data}:{self.start}:{len(self.bits)}:{packed}"

    @classmethod
    def decode(cls, text: str) -> ExampleBits:
        """The inverse of `encode` (ValueError on malformed text)."""
        data, start, n, packed = text.split(":")
        count = int(n)
        bits = np.unpackbits(np.frombuffer(bytes.fromhex(packed), dtype=np.uint8))[:count]
        if len(bits) != count:
            raise ValueError(f"outcome bitmap holds {len(bits)} bits, expected {count}")
        return cls(data=data, start=int(start), bits=bits.astype(bool))

    @classmethod
    def concat(cls, parts: list[ExampleBits]) -> ExampleBits:
        """Consecutive chunks of one slice joined in order (ValueError on a gap or overlap)."""
        first = parts[0]
        position = first.start
        for part in parts:
            if part.data != first.data or part.start != position:
                raise ValueError("outcome chunks are not consecutive parts of one slice")
            position += len(part.bits)
        return cls(data=first.data, start=first.start,
                   bits=np.concatenate([p.bits for p in parts]))
