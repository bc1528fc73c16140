"""OpenAI's own Python client against `walsh serve --model` (run by `cargo xtask test`).

Usage: python openai_client.py WALSH_BINARY   (from the repository root)

Starts the server on a free port with the shipped Hadamard model on the CPU decoder, then
through the `openai` package: lists the models, asks for completions plain and streamed,
greedy and seeded, and checks each text equals what `walsh generate` prints for the same
prompt and settings; checks a wrong key, a bad request and a chat with a model that has
no chat template raise the client's own errors. Then serves a random model that carries a
tokenizer and a chat template (`walsh init-model --tokenizer tests/data/chat/...`) and
asks it for chat completions, streamed and not.
Exits non-zero on the first mismatch.
"""

import subprocess
import sys
import tempfile

import openai

WALSH = sys.argv[1]
MODEL = "shakespeare-hadamard"
KEY = "sesame"


def generated(prompt, tokens, *settings):
    """What `walsh generate --device cpu` prints after the prompt."""
    out = subprocess.run(
        [WALSH, "generate", "--device", "cpu", "--prompt", prompt,
         "--max-tokens", str(tokens), *settings],
        check=True, capture_output=True, text=True,
    ).stdout
    assert out.startswith(prompt) and out.endswith("\n"), out
    return out[len(prompt):-1]


def serve(model_dir):
    """`walsh serve --model model_dir` on a free port; returns (process, client)."""
    server = subprocess.Popen(
        [WALSH, "serve", "--port", "0", "--model", model_dir, "--device", "cpu",
         "--api-key", KEY],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    line = server.stdout.readline()
    port = int(line.split("127.0.0.1:")[1].split("/")[0])
    return server, openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY)


def chat_checks():
    """Chat completions on a random model that carries a tokenizer and a chat template
    (tests/data/chat): streamed and not, the same reply."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [WALSH, "init-model", "--out", f"{tmp}/chatty", "--hidden-size", "64",
             "--layers", "2", "--heads", "4", "--context", "128", "--seed", "5",
             "--tokenizer", "tests/data/chat/tokenizer.json"],
            check=True, capture_output=True,
        )
        server, client = serve(f"{tmp}/chatty")
        try:
            messages = [{"role": "system", "content": "Answer in verse."},
                        {"role": "user", "content": "Who is there?"}]
            c = client.chat.completions.create(model="chatty", messages=messages,
                                               max_tokens=24, temperature=0)
            reply = c.choices[0].message
            assert reply.role == "assistant" and reply.content, c
            assert c.choices[0].finish_reason in ("stop", "length"), c
            pieces = [chunk.choices[0].delta.content or ""
                      for chunk in client.chat.completions.create(
                          model="chatty", messages=messages, max_tokens=24,
                          temperature=0, stream=True)]
            assert "".join(pieces) == reply.content, (pieces, reply.content)
        finally:
            server.kill()
            server.wait()
    return 2


def main():
    server, client = serve(f"models/{MODEL}")
    try:
        checks = chat_checks()

        ids = [m.id for m in client.models.list()]
        assert ids == [MODEL], ids
        checks += 1

        greedy = generated("ROMEO.", 40, "--temperature", "0")
        c = client.completions.create(model=MODEL, prompt="ROMEO.", max_tokens=40,
                                      temperature=0)
        assert c.choices[0].text == greedy, (c.choices[0].text, greedy)
        assert c.choices[0].finish_reason == "length", c
        assert (c.usage.prompt_tokens, c.usage.completion_tokens) == (6, 40), c.usage
        checks += 1

        pieces = []
        finishes = []
        for chunk in client.completions.create(model=MODEL, prompt="ROMEO.", max_tokens=40,
                                               temperature=0, stream=True):
            pieces.append(chunk.choices[0].text)
            finishes.append(chunk.choices[0].finish_reason)
        assert "".join(pieces) == greedy, ("".join(pieces), greedy)
        assert finishes[-1] == "length" and set(finishes[:-1]) <= {None}, finishes
        assert len(pieces) > 2, pieces
        checks += 1

        # Seeded sampling, with top_k as an extension: the same text as generate's.
        seeded = generated("KING.", 30, "--temperature", "0.8", "--top-k", "20",
                       "--top-p", "1", "--seed", "7")
        c = client.completions.create(model=MODEL, prompt="KING.", max_tokens=30,
                                      temperature=0.8, seed=7, extra_body={"top_k": 20})
        assert c.choices[0].text == seeded, (c.choices[0].text, seeded)
        checks += 1

        # A stop string cuts the text, and the client sees finish_reason "stop".
        stop = greedy[10:13]
        c = client.completions.create(model=MODEL, prompt="ROMEO.", max_tokens=40,
                                      temperature=0, stop=[stop])
        assert c.choices[0].text == greedy[:greedy.find(stop)], c
        assert c.choices[0].finish_reason == "stop", c
        checks += 1

        try:
            openai.OpenAI(base_url=client.base_url, api_key="wrong").models.list()
            raise AssertionError("a wrong key was accepted")
        except openai.AuthenticationError as e:
            assert e.status_code == 401 and "API key" in e.message, e
        checks += 1

        try:
            client.completions.create(model=MODEL, prompt="a", max_tokens=500)
            raise AssertionError("max_tokens past the context was accepted")
        except openai.BadRequestError as e:
            assert e.status_code == 400 and "context is 128" in e.message, e
        checks += 1

        # The shipped models carry no chat template: the client's own BadRequestError.
        try:
            client.chat.completions.create(model=MODEL, max_tokens=5,
                                           messages=[{"role": "user", "content": "hi"}])
            raise AssertionError("a chat without a template was accepted")
        except openai.BadRequestError as e:
            assert e.status_code == 400 and "no chat template" in e.message, e
        checks += 1

        print(f"openai {openai.__version__}: {checks} checks passed against walsh serve")
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
