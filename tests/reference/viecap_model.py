"""ViECap ClipCaptionModel as described in meacap-original.md section 5.1 (module and parameter names match the
checkpoint keys), with the GPT-2 built from a config instead of downloaded."""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


class MlpTransformer(nn.Module):
    def __init__(self, input_size, hidden_size, output_size=None, act=F.relu, dropout=0.0):
        super().__init__()
        output_size = output_size if output_size is not None else input_size
        self.fc1 = nn.Linear(input_size, hidden_size)
        self.act = act
        self.fc2 = nn.Linear(hidden_size, output_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.fc2(self.dropout(self.act(self.fc1(x)))))


class MultiHeadAttention(nn.Module):
    def __init__(self, query_size, key_value_size, num_heads, bias=True, dropout=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_size = query_size // num_heads
        self.scale = self.head_size ** -0.5
        self.to_queries = nn.Linear(query_size, query_size, bias=bias)
        self.to_keys_values = nn.Linear(key_value_size, 2 * query_size, bias=bias)
        self.project = nn.Linear(query_size, query_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, query, key_value=None, mask=None):
        key_value = key_value if key_value is not None else query
        b, n, d = query.shape
        _, m, _ = key_value.shape
        q = self.to_queries(query).reshape(b, n, self.num_heads, self.head_size)
        kv = self.to_keys_values(key_value).reshape(b, m, 2, self.num_heads, self.head_size)
        k, v = kv[:, :, 0], kv[:, :, 1]
        att = torch.einsum("bnhd,bmhd->bnmh", q, k) * self.scale
        if mask is not None:
            if mask.dim() == 2:
                mask = mask.unsqueeze(1)
            att = att.masked_fill(mask.unsqueeze(3), float("-inf"))
        att = att.softmax(dim=2)
        out = torch.einsum("bnmh,bmhd->bnhd", att, v).reshape(b, n, d)
        return self.project(out), att


class TransformerLayer(nn.Module):
    def __init__(self, query_size, key_value_size, num_heads, mlp_ratio=4.0, bias=False, dropout=0.0,
                 act=F.relu, norm_layer=nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(query_size)
        self.attn = MultiHeadAttention(query_size, key_value_size, num_heads, bias=bias, dropout=dropout)
        self.norm2 = norm_layer(query_size)
        self.mlp = MlpTransformer(query_size, int(query_size * mlp_ratio), act=act, dropout=dropout)

    def forward(self, x, key_value=None, mask=None):
        y, self.attention = self.attn(self.norm1(x), key_value, mask)
        x = x + y
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    def __init__(self, query_size, num_layers, num_heads, key_value_size=None, mlp_ratio=2.0, act=F.relu,
                 norm_layer=nn.LayerNorm):
        super().__init__()
        key_value_size = key_value_size if key_value_size is not None else query_size
        self.layers = nn.Sequential(*[
            TransformerLayer(query_size, key_value_size, num_heads, mlp_ratio=mlp_ratio, act=act, norm_layer=norm_layer)
            for _ in range(num_layers)
        ])

    def forward(self, x, key_value=None, mask=None):
        for layer in self.layers:
            x = layer(x, key_value, mask)
        return x


class MappingNetwork(nn.Module):
    def __init__(self, clip_project_length, clip_hidden_size, prefix_length, d_model, num_layers=8, num_heads=8):
        super().__init__()
        self.clip_project_length = clip_project_length
        self.linear = nn.Linear(clip_hidden_size, clip_project_length * d_model)
        self.prefix_const = nn.Parameter(torch.randn(prefix_length, d_model), requires_grad=True)
        self.transformer = Transformer(d_model, num_layers, num_heads)

    def forward(self, x):
        x = self.linear(x).view(x.shape[0], self.clip_project_length, -1)
        prefix = self.prefix_const.unsqueeze(0).expand(x.shape[0], *self.prefix_const.shape)
        inputs = torch.cat((x, prefix), dim=1)
        return self.transformer(inputs)[:, self.clip_project_length:, :]


class ClipCaptionModel(nn.Module):
    def __init__(self, continuous_length=10, clip_project_length=10, clip_hidden_size=512, num_layers=8,
                 num_heads=8, gpt=None, soft_prompt_first=False, only_hard_prompt=False):
        super().__init__()
        self.soft_prompt_first = soft_prompt_first
        self.only_hard_prompt = only_hard_prompt
        self.continuous_length = continuous_length
        self.gpt = gpt
        self.gpt_hidden_size = gpt.config.hidden_size
        self.mapping_network = MappingNetwork(clip_project_length, clip_hidden_size, continuous_length,
                                              self.gpt_hidden_size, num_layers, num_heads)
        self.gpt_type = "gpt2"

    def word_embed(self, caption_tokens):
        return self.gpt.transformer.wte(caption_tokens)
