// llama.cpp as the reference of tests/gguf_load.rs (run by make_llama_cpp_reference.py): loads a
// GGUF, tokenizes each prompt with the model's own tokenizer (BOS added as the model says,
// special tokens not parsed), decodes N tokens greedily (the first largest logit, as
// walsh's argmax; EOS ignored) on the CPU with an f32 KV cache and flash attention off, and
// prints one JSON line per prompt: the prompt ids, the generated ids and each step's 8
// largest logits. (llama.cpp's flash attention, which it turns on by itself on the CPU,
// casts an f32 K and V cache to f16 and sums V in f16: 1e-4 of the largest logit here.)
//   llama-greedy MODEL.gguf N_PREDICT PROMPT...
#include "llama.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

static void quiet(enum ggml_log_level level, const char * text, void *) {
    if (level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

int main(int argc, char ** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL.gguf N_PREDICT PROMPT...\n", argv[0]);
        return 2;
    }
    const int n_predict = atoi(argv[2]);
    llama_log_set(quiet, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (model == nullptr) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    for (int a = 3; a < argc; a++) {
        const std::string prompt = argv[a];
        std::vector<llama_token> tokens(prompt.size() + 8);
        const int n = llama_tokenize(vocab, prompt.c_str(), prompt.size(), tokens.data(),
                                     tokens.size(), true, false);
        if (n < 0) {
            fprintf(stderr, "cannot tokenize\n");
            return 1;
        }
        tokens.resize(n);
        llama_context_params cp = llama_context_default_params();
        cp.n_ctx = tokens.size() + n_predict;
        cp.n_batch = tokens.size();
        cp.type_k = GGML_TYPE_F32;
        cp.type_v = GGML_TYPE_F32;
        cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
        cp.n_threads = 1;
        cp.n_threads_batch = 1;
        llama_context * ctx = llama_init_from_model(model, cp);
        if (ctx == nullptr) {
            fprintf(stderr, "cannot create a context\n");
            return 1;
        }
        std::vector<llama_token> out;
        std::vector<std::vector<std::pair<int, float>>> tops;
        llama_batch batch = llama_batch_get_one(tokens.data(), tokens.size());
        llama_token next = 0;
        std::vector<int> order(n_vocab);
        for (int i = 0; i < n_predict; i++) {
            if (llama_decode(ctx, batch) != 0) {
                fprintf(stderr, "llama_decode failed at token %d\n", i);
                return 1;
            }
            const float * logits = llama_get_logits_ith(ctx, -1);
            std::iota(order.begin(), order.end(), 0);
            std::partial_sort(order.begin(), order.begin() + 8, order.end(), [&](int x, int y) {
                return logits[x] > logits[y] || (logits[x] == logits[y] && x < y);
            });
            std::vector<std::pair<int, float>> top;
            for (int k = 0; k < 8; k++) {
                top.push_back({order[k], logits[order[k]]});
            }
            tops.push_back(top);
            next = order[0];
            out.push_back(next);
            batch = llama_batch_get_one(&next, 1);
        }
        printf("{\"prompt\": \"%s\", \"prompt_ids\": [", prompt.c_str());
        for (size_t i = 0; i < tokens.size(); i++) {
            printf(i ? ", %d" : "%d", tokens[i]);
        }
        printf("], \"tokens\": [");
        for (size_t i = 0; i < out.size(); i++) {
            printf(i ? ", %d" : "%d", out[i]);
        }
        printf("], \"top\": [");
        for (size_t i = 0; i < tops.size(); i++) {
            printf(i ? ", [" : "[");
            for (size_t k = 0; k < tops[i].size(); k++) {
                printf(k ? ", [%d, %.9g]" : "[%d, %.9g]", tops[i][k].first, tops[i][k].second);
            }
            printf("]");
        }
        printf("]}\n");
        llama_free(ctx);
    }
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
