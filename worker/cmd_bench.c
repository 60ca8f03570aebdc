/* cmd_bench.c - `voxq bench`: compares a stored model's variants (speed, memory, quality) and
 * writes results.json, report.html and the audio (ops/bench.h, docs/bench.md). Also the
 * hidden child mode (`--child VARIANT`) the comparison starts once per variant. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "ops/bench.h"
#include "ops/store.h"
#include "worker/cli.h"

#define DEFAULT_MODEL "dia-1.6b"
#define DEFAULT_CODEC "dac-44khz"

void cmd_bench_help(void) {
    printf(
        "usage: voxq bench [--model NAME] [--compare original,int8,int4] [--prompts FILE]\n"
        "                  [--runs N] [--out DIR] [options]\n"
        "\n"
        "Measures each variant of a stored model in its own child process (so memory one\n"
        "variant used never counts for another): load time to ready, weights/KV/workspace\n"
        "bytes, memory baseline and peak (device memory on a GPU, process RSS on the CPU),\n"
        "decoder steps/s, realtime factor, time to first audio, steps/s against concurrent\n"
        "sequences, and quality figures against the original (teacher-forced top-1 agreement\n"
        "and KL, EOS position difference, log-mel distance; docs/quality.md). Writes\n"
        "DIR/results.json, DIR/report.html (inline SVG charts, no network needed) and\n"
        "DIR/audio/VARIANT-PROMPT.wav. Figures are measurements, never pass/fail.\n"
        "\n"
        "  --model NAME         model in the store [%s]  (VOXQ_MODEL)\n"
        "  --compare LIST       variants, comma-separated, each in the store\n"
        "                       [original,int8,int4]\n"
        "  --prompts FILE       NAME<TAB>TEXT per line [built-in set, docs/quality-prompts.txt]\n"
        "  --runs N             timed runs per prompt [1]\n"
        "  --out DIR            output directory [./bench-out]\n"
        "  --steps N            decoder steps at most per run (86 per second of audio) [512]\n"
        "  --seed N             prompt i uses seed N + i in every variant [1]\n"
        "  --concurrency LIST   sequence counts for the scaling curve, or none [1,2,4,8]\n"
        "  --no-quality         skip the quality figures\n"
        "  --codec NAME         codec model [the model manifest's \"codec\", else %s]\n"
        "                       (VOXQ_CODEC)\n"
        "  --store DIR          store root [./store]  (VOXQ_STORE)\n"
        "  --device D           auto | cuda | cpu [auto]  (VOXQ_DEVICE)\n"
        "  --threads N          CPU threads, 0 = all [0]  (VOXQ_THREADS)\n"
        "\n"
        "Exit codes: 0 every variant measured, 1 some measurement failed (results.json and\n"
        "report.html still written; the variant's entry says why), 2 bad usage or a variant\n"
        "missing from the store.\n",
        DEFAULT_MODEL, DEFAULT_CODEC);
}

typedef struct bench_args {
    bench_opts o;
    const char *store_root;
    const char *compare;
    const char *child; /* child mode: the variant */
    const char *child_dir;
    const char *child_json;
    char *list_buf; /* owns the variant names */
} bench_args;

/* "1,2,4" -> o->concurrency; "none" -> empty. */
static int parse_concurrency(const char *s, bench_opts *o) {
    o->nconcurrency = 0;
    if (!strcmp(s, "none")) return 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    char *save = NULL;
    for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        long n;
        if (o->nconcurrency >= BENCH_MAX_CONCURRENCY || cli_parse_long(t, 1, 64, &n)) return -1;
        o->concurrency[o->nconcurrency++] = (int)n;
    }
    return o->nconcurrency ? 0 : -1;
}

/* Fills a from argv and the environment; returns 0 or 2 (usage error, printed). */
static int parse_args(int argc, char **argv, bench_args *a) {
    memset(a, 0, sizeof *a);
    bench_opts *o = &a->o;
    o->model = cli_env("VOXQ_MODEL", DEFAULT_MODEL);
    o->codec = cli_env("VOXQ_CODEC", NULL);
    o->device = cli_env("VOXQ_DEVICE", "auto");
    o->out_dir = "bench-out";
    o->runs = 1;
    o->steps = 512;
    o->seed = 1;
    o->quality = 1;
    a->store_root = store_default_root();
    a->compare = "original,int8,int4";
    const char *threads = cli_env("VOXQ_THREADS", "0"), *conc = "1,2,4,8";
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i], *v;
        int missing = 0;
        long n;
#define FLAG(name) ((v = cli_flag_value(argc, argv, &i, name, &missing)) != NULL || missing)
        if (!strcmp(flag, "--no-quality")) {
            o->quality = 0;
            continue;
        } else if (FLAG("--model")) {
            o->model = v;
        } else if (FLAG("--compare")) {
            a->compare = v;
        } else if (FLAG("--prompts")) {
            o->prompts_file = v;
        } else if (FLAG("--runs")) {
            if (v && cli_parse_long(v, 1, 1000, &n)) goto bad_value;
            if (v) o->runs = (int)n;
        } else if (FLAG("--out")) {
            o->out_dir = v;
        } else if (FLAG("--steps")) {
            if (v && cli_parse_long(v, 2, 1 << 16, &n)) goto bad_value;
            if (v) o->steps = (int)n;
        } else if (FLAG("--seed")) {
            if (v && cli_parse_long(v, 0, 1L << 40, &n)) goto bad_value;
            if (v) o->seed = (uint64_t)n;
        } else if (FLAG("--concurrency")) {
            conc = v;
        } else if (FLAG("--codec")) {
            o->codec = v;
        } else if (FLAG("--store")) {
            a->store_root = v;
        } else if (FLAG("--device")) {
            o->device = v;
        } else if (FLAG("--threads")) {
            threads = v;
        } else if (FLAG("--child")) {
            a->child = v;
        } else if (FLAG("--child-dir")) {
            a->child_dir = v;
        } else if (FLAG("--child-json")) {
            a->child_json = v;
        } else if (FLAG("--codec-dir")) {
            o->codec_dir = v;
        } else if (FLAG("--original-dir")) {
            o->original_dir = v;
        } else {
            fprintf(stderr, "voxq bench: unknown option '%s' (see voxq help bench)\n", flag);
            return 2;
        }
#undef FLAG
        if (missing) {
            fprintf(stderr, "voxq bench: %s needs a value\n", flag);
            return 2;
        }
        continue;
    bad_value:
        fprintf(stderr, "voxq bench: bad value '%s' for %s\n", v, flag);
        return 2;
    }
    long n;
    if (cli_parse_long(threads, 0, 4096, &n)) {
        fprintf(stderr, "voxq bench: bad thread count '%s'\n", threads);
        return 2;
    }
    o->threads = (int)n;
    if (parse_concurrency(conc, o)) {
        fprintf(stderr,
                "voxq bench: bad --concurrency '%s' (e.g. 1,2,4 with counts 1..64, at "
                "most %d, or none)\n",
                conc, BENCH_MAX_CONCURRENCY);
        return 2;
    }
    return 0;
}

/* Child mode: measure one variant and write its JSON to --child-json. */
static int run_child(bench_args *a) {
    bench_opts *o = &a->o;
    if (!a->child_dir || !a->child_json || !o->codec_dir) {
        fprintf(stderr, "voxq bench: --child needs --child-dir, --child-json and --codec-dir\n");
        return 2;
    }
    o->variants[0] = a->child;
    o->variant_dirs[0] = a->child_dir;
    o->nvariants = 1;
    if (!o->codec) o->codec = "?";
    eng_error err = {0};
    cJSON *v = NULL;
    if (bench_measure_variant(o, 0, &v, &err)) {
        fprintf(stderr, "voxq bench: %s: %s\n", a->child, err.msg);
        return 1;
    }
    char *text = cJSON_Print(v);
    cJSON_Delete(v);
    FILE *f = text ? fopen(a->child_json, "w") : NULL;
    int ok = f && fputs(text, f) >= 0;
    if (f && fclose(f) != 0) ok = 0;
    free(text);
    if (!ok) {
        fprintf(stderr, "voxq bench: cannot write %s: %s\n", a->child_json, strerror(errno));
        return 1;
    }
    return 0;
}

/* The directory of a valid model/variant into buf; prints why not and returns 2 or 1. */
static int variant_dir(const store *st, const char *model, const char *variant, char *buf,
                       size_t n) {
    eng_error err = {0};
    if (!store_name_valid(model) || !store_name_valid(variant)) {
        fprintf(stderr, "voxq bench: invalid name '%s/%s' (allowed: [a-z0-9._-])\n", model,
                variant);
        return 2;
    }
    int state = store_variant_state(st, model, variant, &err);
    if (state < 0) {
        fprintf(stderr, "voxq bench: %s\n", err.msg);
        return 1;
    }
    if (state == STORE_ABSENT) {
        fprintf(stderr, "voxq bench: %s/%s is not in the store at %s%s%s%s\n", model, variant,
                st->root,
                strcmp(variant, "original") ? " (make it with: voxq quantize --model " : "",
                strcmp(variant, "original") ? model : "",
                strcmp(variant, "original") ? " --method VARIANT)" : "");
        return 2;
    }
    if (state == STORE_INVALID) {
        fprintf(stderr, "voxq bench: %s/%s is damaged: %s\n", model, variant, err.msg);
        return 1;
    }
    if (store_variant_dir(st, model, variant, buf, n, &err)) {
        fprintf(stderr, "voxq bench: %s\n", err.msg);
        return 1;
    }
    return 0;
}

/* The codec a model's manifest names, or NULL (copied into buf). */
static const char *manifest_codec(const store *st, const char *model, const char *variant,
                                  char *buf, size_t n) {
    store_manifest man;
    memset(&man, 0, sizeof man);
    if (store_manifest_read(st, model, variant, &man, NULL)) return NULL;
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(man.json, "codec");
    const char *res = NULL;
    if (cJSON_IsString(c) && store_name_valid(c->valuestring)) {
        snprintf(buf, n, "%s", c->valuestring);
        res = buf;
    }
    store_manifest_free(&man);
    return res;
}

/* Parent mode: resolve every variant, the codec and the original; run the comparison. */
static int run_compare(bench_args *a) {
    bench_opts *o = &a->o;
    static char dirs[BENCH_MAX_VARIANTS][STORE_PATH_MAX];
    static char orig_dir[STORE_PATH_MAX], codec_dir[STORE_PATH_MAX], codec_buf[STORE_NAME_MAX];
    static char self[4096];
    a->list_buf = strdup(a->compare);
    if (!a->list_buf) return 1;
    char *save = NULL;
    for (char *t = strtok_r(a->list_buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (o->nvariants >= BENCH_MAX_VARIANTS) {
            fprintf(stderr, "voxq bench: at most %d variants\n", BENCH_MAX_VARIANTS);
            return 2;
        }
        for (int i = 0; i < o->nvariants; i++)
            if (!strcmp(o->variants[i], t)) {
                fprintf(stderr, "voxq bench: variant '%s' named twice\n", t);
                return 2;
            }
        o->variants[o->nvariants++] = t;
    }
    if (o->nvariants == 0) {
        fprintf(stderr, "voxq bench: --compare names no variant\n");
        return 2;
    }
    store st;
    eng_error err = {0};
    if (store_open(&st, a->store_root, &err)) {
        fprintf(stderr, "voxq bench: %s\n", err.msg);
        return 1;
    }
    int rc = 0;
    for (int i = 0; i < o->nvariants && !rc; i++) {
        rc = variant_dir(&st, o->model, o->variants[i], dirs[i], sizeof dirs[i]);
        o->variant_dirs[i] = dirs[i];
    }
    if (!rc && store_variant_state(&st, o->model, "original", NULL) == STORE_VALID &&
        store_variant_dir(&st, o->model, "original", orig_dir, sizeof orig_dir, NULL) == 0)
        o->original_dir = orig_dir;
    if (!rc && !o->codec)
        o->codec = manifest_codec(&st, o->model, "original", codec_buf, sizeof codec_buf);
    if (!rc && !o->codec) o->codec = DEFAULT_CODEC;
    if (!rc) rc = variant_dir(&st, o->codec, "original", codec_dir, sizeof codec_dir);
    store_close(&st);
    if (rc) return rc;
    o->codec_dir = codec_dir;
    if (o->quality && !o->original_dir)
        fprintf(stderr, "voxq bench: %s/original is not in the store: no quality figures\n",
                o->model);
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) {
        fprintf(stderr, "voxq bench: cannot find my own executable: %s\n", strerror(errno));
        return 1;
    }
    self[n] = '\0';
    o->self_exe = self;
    rc = bench_compare(o, &err);
    if (rc < 0) {
        fprintf(stderr, "voxq bench: %s\n", err.msg);
        return rc == ENG_EINVAL || rc == ENG_EFORMAT ? 2 : 1;
    }
    printf("wrote %s/results.json, %s/report.html and %s/audio/\n", o->out_dir, o->out_dir,
           o->out_dir);
    return rc ? 1 : 0;
}

int cmd_bench(int argc, char **argv) {
    bench_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc;
    rc = a.child ? run_child(&a) : run_compare(&a);
    free(a.list_buf);
    return rc;
}
