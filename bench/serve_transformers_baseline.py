"""Baseline (d) of bench/serve_bench.py: the server a team would write by hand.

FastAPI + transformers ``model.generate``, one request at a time (a lock around generate, since a
model object is not safe to share), greedy, the same prompt as intentlm, stopping at end of turn.
Run: ``python bench/serve_transformers_baseline.py --model DIR --port 8100``.
"""

from __future__ import annotations

import argparse
import threading

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from service.modelcard import read_card
from service.prompt import build_prompt


class Body(BaseModel):
    text: str
    max_new_tokens: int = 64


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16).eval()
    card = read_card(args.model)
    system_prompt = card.system_prompt if card else "You are a helpful assistant"
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    def predict(body: Body) -> dict[str, object]:
        prompt = build_prompt(body.text, system_prompt=system_prompt, tokenizer=tokenizer)
        inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with lock, torch.inference_mode():
            output = model.generate(
                **inputs,
                max_new_tokens=body.max_new_tokens,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.eos_token_id,
            )
        new = output[0, inputs["input_ids"].shape[1] :]
        return {"raw": tokenizer.decode(new, skip_special_tokens=True), "tokens": int(new.shape[0])}

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
