// Greedy decoding with llama.cpp from raw token ids (benches/peer-llamacpp.sh): the prompt's
// bytes are the token ids (walsh's byte vocabulary, exported as <0x00>..<0xFF>), so no
// tokenizer stands between the two engines; llama.cpp's SentencePiece tokenizer would turn
// every space into U+2581 ("▁", three byte tokens) before tokenizing. Prints one JSON line:
// the generated ids and the decode rate. Greedy = the first largest logit, as walsh's
// argmax. EOS is ignored: exactly N tokens are generated, as `walsh generate` does.
//   peer-greedy MODEL.gguf N_PREDICT N_GPU_LAYERS PROMPT
#include "llama.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

static void quiet(enum ggml_log_level level, const char * text, void *) {
    if (level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

int main(int argc, char ** argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL.gguf N_PREDICT N_GPU_LAYERS PROMPT\n", argv[0]);
        return 2;
    }
    const int n_predict = atoi(argv[2]);
    const std::string prompt = argv[4];
    if (n_predict < 1 || prompt.empty()) {
        fprintf(stderr, "need N_PREDICT >= 1 and a non-empty prompt\n");
        return 2;
    }
    if (getenv("PEER_VERBOSE") == nullptr) {
        llama_log_set(quiet, nullptr);
    }
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = atoi(argv[3]);
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (model == nullptr) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));

    std::vector<llama_token> tokens;
    for (unsigned char c : prompt) {
        tokens.push_back((llama_token) c);
    }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = tokens.size() + n_predict;
    cp.n_batch = tokens.size();
    llama_context * ctx = llama_init_from_model(model, cp);
    if (ctx == nullptr) {
        fprintf(stderr, "cannot create a context\n");
        return 1;
    }

    std::vector<llama_token> out;
    double decode_s = 0.0;
    llama_batch batch = llama_batch_get_one(tokens.data(), tokens.size());
    llama_token next = 0;
    for (int i = 0; i < n_predict; i++) {
        const auto t0 = std::chrono::steady_clock::now();
        if (llama_decode(ctx, batch) != 0) {
            fprintf(stderr, "llama_decode failed at token %d\n", i);
            return 1;
        }
        const float * logits = llama_get_logits_ith(ctx, -1);
        if (i > 0) {  // the first call is the prompt (prefill), not decode
            decode_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        }
        next = 0;
        for (int v = 1; v < n_vocab; v++) {
            if (logits[v] > logits[next]) {
                next = v;
            }
        }
        out.push_back(next);
        batch = llama_batch_get_one(&next, 1);
    }
    printf("{\"tokens\": [");
    for (size_t i = 0; i < out.size(); i++) {
        printf(i ? ", %d" : "%d", out[i]);
    }
    printf("], \"decode_tokens_per_s\": %.3f}\n", decode_s > 0 ? (n_predict - 1) / decode_s : 0.0);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
