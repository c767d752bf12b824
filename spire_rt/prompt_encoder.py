"""CLIP encoding of prompts through the backend, with a cache: the same prompt is never encoded twice.

Restoration prompts are canonicalised before they reach here, so "deblur with sigma 1.50." and
"Deblur with sigma 1.5" share one cache entry.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from .backends import Backend


class PromptEncoder:
    def __init__(self, backend: Backend, tokenizer, max_length: int, cache_size: int = 64):
        self.backend = backend
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.cache_size = cache_size
        self.cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.encoded_count = 0  # how many prompts actually went through the text encoder

    def encode(self, texts: list[str]) -> torch.Tensor:
        """[len(texts), max_length, width] embeddings; uncached prompts are encoded together in one call."""
        missing = list(dict.fromkeys(text for text in texts if text not in self.cache))
        if missing:
            input_ids = self.tokenizer(missing, padding="max_length", max_length=self.max_length,
                                       truncation=True, return_tensors="pt").input_ids
            embeddings = self.backend.run("text_encoder", {"input_ids": input_ids.to(self.backend.device)})
            for text, embedding in zip(missing, embeddings["text_embeddings"]):
                self.cache[text] = embedding
            self.encoded_count += len(missing)
        for text in texts:
            self.cache.move_to_end(text)
        result = torch.stack([self.cache[text] for text in texts])
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return result
