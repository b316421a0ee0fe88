/*
 * Fuzz target for the answer side of src/model/: the first byte picks the format (Gemini,
 * OpenAI-compatible, Anthropic), the rest is the upstream's body. A body that decodes must give
 * a well-formed turn (every call has an id and a name, and either args or args_error), and the
 * turn's message, appended to a conversation with a result for each call, must encode in all
 * three formats. Built with -fsanitize=fuzzer when BUILD_FUZZERS is on; otherwise main() replays
 * the files and directories it is given (STYLE R-46), which ctest does over the corpus.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const specs[] = { "gemini-2.5-pro", "openai:local", "anthropic:claude-x" };

/* Encodes conv in every format; a failure here is a bug (the message came from decode). */
static void
encode_all(json_t *conv)
{
    for (size_t f = 0; f < 3; f++) {
        struct model_ref m;
        struct model_request req = { .model = &m, .system_instruction = "s", .messages = conv };
        struct model_enc enc = { .req = &req };
        struct err *e = NULL;
        json_t *body;
        char *s;

        ASSERT(model_parse(specs[f], &m, NULL) == 0);
        body = model__wire(m.format)->encode(&enc, &e);
        if (body == NULL) {
            fprintf(stderr, "encode %s: %s\n", specs[f], e->msg);
            ASSERT(!"a decoded turn does not encode");
        }
        s = json_dumps(body, JSON_COMPACT);
        ASSERT(s != NULL);
        free(s);
        json_decref(body);
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct model_ref m;
    struct model_turn t;
    struct err *e = NULL;
    json_t *resp, *conv;

    if (size < 1)
        return 0;
    ASSERT(model_parse(specs[data[0] % 3], &m, NULL) == 0);
    resp = json_loadb((const char *)data + 1, size - 1, 0, NULL);
    if (resp == NULL)
        return 0;
    memset(&t, 0, sizeof(t));
    if (model__wire(m.format)->decode(&m, resp, 5, &t, &e) < 0) {
        ASSERT(e != NULL && e->msg != NULL);
        err_free(e);
        model_turn_clear(&t);
        json_decref(resp);
        return 0;
    }
    ASSERT(t.message != NULL);
    conv = json_pack("[{s:s, s:s}]", "role", "user", "text", "go");
    json_array_append(conv, t.message);
    for (size_t i = 0; i < t.ncalls; i++) {
        const struct model_call *c = &t.calls[i];
        ASSERT(c->id != NULL && *c->id != '\0' && c->name != NULL && c->args_text != NULL);
        ASSERT((c->args != NULL) != (c->args_error != NULL));
        ASSERT(c->args == NULL || json_is_object(c->args));
        json_array_append_new(conv, json_pack("{s:s, s:s, s:s, s:s, s:b}", "role", "tool",
                                              "call_id", c->id, "name", c->name, "output", "x",
                                              "is_error", c->args == NULL));
    }
    encode_all(conv);
    json_decref(conv);
    model_turn_clear(&t);
    json_decref(resp);
    return 0;
}

#ifndef PADDOCK_LIBFUZZER
static int
replay_file(const char *path)
{
    char *data = NULL;
    size_t len = 0;
    struct err *e = NULL;

    if (util_read_file_at(AT_FDCWD, path, 16 * 1024 * 1024, &data, &len, &e) < 0) {
        fprintf(stderr, "%s\n", e->msg);
        err_free(e);
        return -1;
    }
    LLVMFuzzerTestOneInput((const uint8_t *)data, len);
    free(data);
    return 0;
}

int
main(int argc, char **argv)
{
    int n = 0;

    for (int i = 1; i < argc; i++) {
        DIR *d = opendir(argv[i]);
        struct dirent *de;
        if (d == NULL) {
            if (replay_file(argv[i]) < 0)
                return 1;
            n++;
            continue;
        }
        while ((de = readdir(d)) != NULL) {
            char *p;
            if (de->d_name[0] == '.')
                continue;
            p = xasprintf("%s/%s", argv[i], de->d_name);
            if (replay_file(p) < 0) {
                free(p);
                closedir(d);
                return 1;
            }
            free(p);
            n++;
        }
        closedir(d);
    }
    printf("model_decode: %d inputs replayed\n", n);
    return n > 0 ? 0 : 1;
}
#endif
