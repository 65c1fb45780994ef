#!/usr/bin/env python3
"""Loads a GGUF in llama.cpp (llama-cpp-python) and prints, as JSON, what the convert test
compares with our own loader: the prompt's token ids by llama.cpp's tokenizer, `n` greedy tokens,
the model's hyper-parameters as llama.cpp read them, and the chat template rendered by jinja2 (as
llama-cpp-python renders it for chat) on a fixed text conversation.

    python3 scripts/llamacpp_greedy.py MODEL.gguf "prompt text" N
"""

import json
import sys

import llama_cpp
import numpy as np


def main() -> None:
    path, prompt, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    llm = llama_cpp.Llama(model_path=path, n_ctx=256, n_threads=2, n_batch=64, logits_all=True, verbose=False)
    ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    llm.eval(ids)
    greedy = []
    for _ in range(n):
        logits = np.asarray(llm.scores[llm.n_tokens - 1])
        tok = int(np.argmax(logits))
        greedy.append(tok)
        llm.eval([tok])
    prompt_logits = np.asarray(llm.scores[len(ids) - 1]).tolist()

    md = llm.metadata
    rendered = None
    if "tokenizer.chat_template" in md:
        import jinja2

        env = jinja2.Environment(loader=jinja2.BaseLoader())
        messages = [
            {"role": "user", "content": "What is in the picture?"},
            {"role": "assistant", "content": "A cat."},
            {"role": "user", "content": "What colour is it?"},
        ]
        rendered = env.from_string(md["tokenizer.chat_template"]).render(messages=messages, add_generation_prompt=True)
    print(
        json.dumps(
            {
                "prompt_ids": ids,
                "greedy": greedy,
                "last_prompt_logits": prompt_logits,
                "n_vocab": llm.n_vocab(),
                "n_embd": llm.n_embd(),
                "chat": rendered,
                "llama_cpp_python": llama_cpp.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
