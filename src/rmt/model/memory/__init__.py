"""The model's memories: the parametric product-key memory, the explicit bank written at run time, and the
reader that builds every query and makes every read.

    product_key.py   ProductKeyMemory: n_keys² learned slots, exact top-k in O(n_keys) per query
    bag_sum.py       the gather-and-sum of value rows it uses, with a fast backward
    bank.py          the Bank protocols and the two run-time kinds (linear attention, softmax), their projections
    reader.py        MemoryReader: queries, the prelude's read, the thinking core's re-read

To add a kind of bank, satisfy `WritableBank` (or `Bank`, read-only); to add a way of reading, extend
`MemoryReader`.
"""

from .bank import Bank, ExplicitMemoryBank, ExplicitMemoryRead, SoftmaxMemoryBank, WritableBank, feature_map
from .product_key import MemoryLookup, ProductKeyMemory
from .reader import CoreRead, MemoryReader, ReaderState

__all__ = ["Bank", "CoreRead", "ExplicitMemoryBank", "ExplicitMemoryRead", "MemoryLookup", "MemoryReader",
           "ProductKeyMemory", "ReaderState", "SoftmaxMemoryBank", "WritableBank", "feature_map"]
