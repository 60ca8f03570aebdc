/* dia_text.c - the text front end (spec 3): UTF-8 check and Dia's byte tokenizer. */
#include "engine/models/dia.h"

#include <string.h>

/* Length of the valid UTF-8 sequence starting at s[0] (1..4), or 0 when it is invalid:
 * truncated, a stray continuation byte, an overlong form, a surrogate or above U+10FFFF. */
static int utf8_seq_len(const unsigned char *s, size_t left) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    int n;
    unsigned cp, min;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2, cp = c & 0x1f, min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3, cp = c & 0x0f, min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4, cp = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if ((size_t)n > left) return 0;
    for (int i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return n;
}

/* Tags become single ids; they are plain ASCII, so matching bytes never splits a UTF-8
 * sequence. Order does not matter: no tag is a prefix of another. */
static const struct {
    const char *tag;
    size_t len;
    int32_t id;
} tags[] = {{"[S1]", 4, 1}, {"[S2]", 4, 2}, {"<pad>", 5, 0}};

int dia_tokenize(const char *text, size_t len, int32_t *ids, int cap, int *n, eng_error *err) {
    const unsigned char *s = (const unsigned char *)text;
    *n = 0;
    if (!text || len == 0) return eng_errorf(err, ENG_EINVAL, "text is empty");
    for (size_t i = 0; i < len;) {
        int k = utf8_seq_len(s + i, len - i);
        if (k == 0)
            return eng_errorf(err, ENG_EINVAL,
                              "text is not valid UTF-8 (byte 0x%02x at offset %zu)", s[i], i);
        i += (size_t)k;
    }
    int limit = cap < DIA_MAX_TEXT ? cap : DIA_MAX_TEXT;
    int count = 0;
    for (size_t i = 0; i < len;) {
        int32_t id = s[i];
        size_t step = 1;
        for (size_t t = 0; t < sizeof tags / sizeof tags[0]; t++) {
            if (len - i >= tags[t].len && memcmp(s + i, tags[t].tag, tags[t].len) == 0) {
                id = tags[t].id;
                step = tags[t].len;
                break;
            }
        }
        if (count >= limit)
            return eng_errorf(err, ENG_EINVAL,
                              "text too long: more than %d ids (the limit is %d bytes after each "
                              "[S1]/[S2]/<pad> tag counts as one)",
                              limit, limit);
        ids[count++] = id;
        i += step;
    }
    *n = count;
    return 0;
}
