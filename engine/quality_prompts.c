/* quality_prompts.c - the built-in quality prompt set and the prompt file parser. */
#include <string.h>

#include "engine/quality.h"

/* Keep in step with docs/quality-prompts.txt (tests/quality compares them): a short line, a
 * long paragraph (cross-attention over ~300 bytes, long audio), a two-speaker exchange with a
 * non-verbal tag, and accented Latin-script text (multi-byte UTF-8 ids). */
static const quality_prompt default_prompts[] = {
    {"short", "[S1] Hello there, how are you today?"},
    {"long",
     "[S1] The old lighthouse keeper climbed the spiral stairs every evening at dusk, counting "
     "each of the one hundred and twelve steps aloud. At the top he trimmed the wick, polished "
     "the great lens until it shone, and watched the first ships turn toward the harbour as the "
     "light swept slowly across the dark and restless water."},
    {"two_speakers", "[S1] Did you remember to bring the tickets? [S2] I thought you had them! "
                     "[S1] Oh no. Check your jacket pocket. [S2] Wait... here they are. (laughs)"},
    {"non_ascii", "[S1] \xc3\x87"
                  "a va tr\xc3\xa8s bien, merci ! [S2] Sch\xc3\xb6n, dass du da "
                  "bist. Na\xc3\xafve fa\xc3\xa7"
                  "ade, sm\xc3\xb6rg\xc3\xa5sbord, jalape\xc3\xb1o "
                  "\xe2\x80\x94 \xc2\xbfqu\xc3\xa9 tal?"},
};

int quality_default_prompts(const quality_prompt **out) {
    *out = default_prompts;
    return (int)(sizeof default_prompts / sizeof default_prompts[0]);
}

/* 1 when name is [a-z0-9_-]{1,QUALITY_NAME_MAX-1}. */
static int name_ok(const char *name) {
    size_t n = strlen(name);
    if (n == 0 || n >= QUALITY_NAME_MAX) return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = name[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '-'))
            return 0;
    }
    return 1;
}

int quality_prompts_parse(char *buf, quality_prompt *out, int cap, int *n, const char *what,
                          eng_error *err) {
    *n = 0;
    int line_no = 0;
    char *line = buf;
    while (line && *line) {
        line_no++;
        char *nl = strchr(line, '\n');
        char *next = nl ? nl + 1 : NULL;
        if (nl) *nl = '\0';
        size_t len = strlen(line);
        if (len && line[len - 1] == '\r') line[--len] = '\0';
        if (len == 0 || line[0] == '#') {
            line = next;
            continue;
        }
        char *tab = strchr(line, '\t');
        if (!tab || tab[1] == '\0')
            return eng_errorf(err, ENG_EFORMAT, "%s:%d: expected NAME<TAB>TEXT", what, line_no);
        *tab = '\0';
        if (!name_ok(line))
            return eng_errorf(err, ENG_EFORMAT, "%s:%d: prompt name '%s' is not [a-z0-9_-]{1,%d}",
                              what, line_no, line, QUALITY_NAME_MAX - 1);
        for (int i = 0; i < *n; i++)
            if (!strcmp(out[i].name, line))
                return eng_errorf(err, ENG_EFORMAT, "%s:%d: prompt name '%s' appears twice", what,
                                  line_no, line);
        if (*n >= cap)
            return eng_errorf(err, ENG_EFORMAT, "%s:%d: more than %d prompts", what, line_no, cap);
        out[*n].name = line;
        out[*n].text = tab + 1;
        (*n)++;
        line = next;
    }
    if (*n == 0) return eng_errorf(err, ENG_EFORMAT, "%s: no prompts", what);
    return 0;
}
