"""rmt: the Recurrent Memory Transformer.

A language model with a product-key memory bank for recall, a recurrent thinking core for multi-step
computation, and a learned router that decides per token which of the two to use.
"""

__version__ = "0.1.0"
