"""A tiny decoder-only transformer over vLLM-style paged KV caches.

Fixed seed, float32, three layers (vllm_driver.LAYERS), two KV heads of 8;
each layer writes its new tokens' K/V into the paged cache in the layout
under test and attends over what the cache holds — so KV that came from
kvds is what the next tokens are computed from. MLA caches hold a 32-wide
latent per token from which K and V are projected.

Every position is computed with operations whose shapes depend only on the
position, never on how many tokens a step computes, so a run that loads a
prefix from kvds and computes the rest must give bit-identical logits to a
run that computes everything (the split-vs-colocated check).
"""
import math

import torch

from vllm_driver import BS, D, H, LAYERS, slot

VOCAB = 512
DIM = H * D
LATENT = 4 * D


class TinyTransformer:
    def __init__(self, layout, seed=0):
        self.layout = layout
        g = torch.Generator().manual_seed(seed)

        def w(*shape):
            return torch.randn(*shape, generator=g) / math.sqrt(shape[0])

        self.emb = torch.randn(VOCAB, DIM, generator=g)
        self.pos = torch.randn(1024, DIM, generator=g) * 0.1
        self.layers = []
        for _ in LAYERS:
            self.layers.append(dict(
                q=w(DIM, DIM), k=w(DIM, DIM), v=w(DIM, DIM), o=w(DIM, DIM),
                c=w(DIM, LATENT), uk=w(LATENT, DIM), uv=w(LATENT, DIM),
                up=w(DIM, 4 * DIM), down=w(4 * DIM, DIM)))
        self.out = w(DIM, VOCAB)
        self.h = {}          # (rank, req, layer, pos) -> input of that layer
        self.logits = {}     # req -> [logits of each sampled token]

    def seed(self, li, rank):
        return li

    @staticmethod
    def _norm(x):
        return x / torch.sqrt((x * x).mean() + 1e-6)

    def _put(self, s, xn, W):
        if self.layout == "mla":
            s.copy_(xn @ W["c"])
            return
        k, v = (xn @ W["k"]).view(H, D), (xn @ W["v"]).view(H, D)
        if self.layout in ("bhnc", "bhnc-strided"):
            s.copy_(torch.cat([k, v], -1))
        else:
            s.copy_(torch.stack([k, v]))

    def _get(self, s, W):
        if self.layout == "mla":
            return (s @ W["uk"]).view(H, D), (s @ W["uv"]).view(H, D)
        if self.layout in ("bhnc", "bhnc-strided"):
            return s[:, :D], s[:, D:]
        return s[0], s[1]

    def layer(self, li, rank, t, req, ids, start, n):
        """Computes layer `li` for positions [start, start+n) of `req`."""
        W, rid, toks = self.layers[li], req.request_id, req.all_token_ids
        xs = {}
        for pos in range(start, start + n):
            x = self.emb[toks[pos]] + self.pos[pos] if li == 0 else self.h.pop((rank, rid, li, pos))
            xs[pos] = x
            self._put(slot(self.layout, t, ids[pos // BS], pos % BS), self._norm(x), W)
        kv = [self._get(slot(self.layout, t, ids[p // BS], p % BS), W)
              for p in range(start + n)]
        K = torch.stack([k for k, _ in kv])          # [tokens, H, D]
        V = torch.stack([v for _, v in kv])
        for pos, x in xs.items():
            q = (self._norm(x) @ W["q"]).view(H, D)
            att = torch.softmax(torch.einsum("hd,thd->ht", q, K[:pos + 1]) / math.sqrt(D), -1)
            o = torch.einsum("ht,thd->hd", att, V[:pos + 1]).reshape(DIM)
            x = x + o @ W["o"]
            x = x + torch.relu(self._norm(x) @ W["up"]) @ W["down"]
            self.h[(rank, rid, li + 1, pos)] = x

    def sample(self, req, rank):
        """Greedy: the token after the last computed position."""
        pos = req.num_tokens - 1
        x = self.h.pop((rank, req.request_id, len(LAYERS), pos))
        logits = self._norm(x) @ self.out
        self.logits.setdefault(req.request_id, []).append(logits)
        return int(torch.argmax(logits))
