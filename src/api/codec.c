/* Small encoders and decoders of the wire: base64 (OpenSSL's), percent-encoding, mime types. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

#include "api_int.h"

int
api_b64_decode(const char *in, size_t len, char **out, size_t *out_len)
{
    EVP_ENCODE_CTX *ctx;
    unsigned char *buf;
    int n = 0, fin = 0;

    if (len > INT32_MAX)
        return -1;
    /* EVP is lenient (whitespace is skipped, '-' ends the data): check the alphabet first. */
    for (size_t i = 0; i < len; i++) {
        char c = in[i];
        bool pad = c == '=' && i + 2 >= len && (i + 1 == len || in[i + 1] == '=');
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '+' || c == '/' || pad))
            return -1;
    }
    ctx = EVP_ENCODE_CTX_new();
    buf = xmalloc(len / 4 * 3 + 4);
    EVP_DecodeInit(ctx);
    if (EVP_DecodeUpdate(ctx, buf, &n, (const unsigned char *)in, (int)len) < 0 ||
        EVP_DecodeFinal(ctx, buf + n, &fin) < 0 || (len % 4) != 0) {
        EVP_ENCODE_CTX_free(ctx);
        free(buf);
        return -1;
    }
    EVP_ENCODE_CTX_free(ctx);
    *out = (char *)buf;
    *out_len = (size_t)n + (size_t)fin;
    return 0;
}

char *
api_b64_encode(const void *data, size_t len)
{
    char *out = xmalloc(4 * ((len + 2) / 3) + 1);

    EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    return out;
}

char *
api_pct_decode(const char *s, size_t len, bool plus_is_space)
{
    char *out = xmalloc(len + 1);
    size_t o = 0;

    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '%') {
            int hi, lo;
            if (i + 2 >= len)
                goto bad;
            hi = util_hexval(s[i + 1]);
            lo = util_hexval(s[i + 2]);
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                goto bad;
            c = (char)(hi * 16 + lo);
            i += 2;
        } else if (c == '+' && plus_is_space) {
            c = ' ';
        } else if (c == '\0') {
            goto bad;
        }
        out[o++] = c;
    }
    out[o] = '\0';
    /* Paths and ids end up in JSON answers and messages, which must be UTF-8. */
    if (!util_utf8_valid(out, o))
        goto bad;
    return out;
bad:
    free(out);
    return NULL;
}

static const struct {
    const char *ext;
    const char *mime;
} mimes[] = {
    {"txt", "text/plain"},        {"md", "text/markdown"},          {"py", "text/x-python"},
    {"json", "application/json"}, {"js", "text/javascript"},        {"mjs", "text/javascript"},
    {"ts", "text/x-typescript"},  {"html", "text/html"},            {"css", "text/css"},
    {"csv", "text/csv"},          {"xml", "application/xml"},       {"yaml", "application/yaml"},
    {"yml", "application/yaml"},  {"sh", "text/x-shellscript"},     {"c", "text/x-c"},
    {"h", "text/x-c"},            {"go", "text/x-go"},              {"rs", "text/x-rust"},
    {"java", "text/x-java"},      {"png", "image/png"},             {"jpg", "image/jpeg"},
    {"jpeg", "image/jpeg"},       {"gif", "image/gif"},             {"svg", "image/svg+xml"},
    {"pdf", "application/pdf"},   {"zip", "application/zip"},       {"tar", "application/x-tar"},
    {"gz", "application/gzip"},   {"tgz", "application/gzip"},      {"wasm", "application/wasm"},
};

const char *
api_mime_type(const char *path)
{
    const char *base = strrchr(path, '/');
    const char *dot = strrchr(base != NULL ? base : path, '.');

    if (dot != NULL)
        for (size_t i = 0; i < sizeof(mimes) / sizeof(mimes[0]); i++)
            if (strcasecmp(dot + 1, mimes[i].ext) == 0)
                return mimes[i].mime;
    return "application/octet-stream";
}

const char *
api_strip_prefix(const char *s, const char *prefix)
{
    size_t n = strlen(prefix);

    return strncmp(s, prefix, n) == 0 ? s + n : s;
}

char *
api_json_error(const json_error_t *je)
{
    /* "<reason> near '<text>'", "<reason> near end of file", "invalid Unicode '\\uD800'",
     * "':' expected near '<text>'": the reason ends at " near " or at the first quoted text
     * of the body; a quoted single character ('[', '{', ':', ...) is jansson's own. */
    const char *near = strstr(je->text, " near ");
    size_t n = 0;

    while (je->text[n] != '\0') {
        if (je->text[n] == '\'' && je->text[n + 1] != '\0' && je->text[n + 2] == '\'') {
            n += 3;
            continue;
        }
        if (je->text[n] == '\'')
            break;
        n++;
    }
    if (near != NULL && (size_t)(near - je->text) < n)
        n = (size_t)(near - je->text);
    while (n > 0 && je->text[n - 1] == ' ')
        n--;
    return xasprintf("request body is not valid JSON: %.*s (line %d, column %d)", (int)n, je->text,
                     je->line, je->column);
}
