/* cmd_synth.c - `voxq synth`: one text to one audio file, on this machine, from the store.
 *
 * Resolves the text-to-speech model and its codec in the artifact store, generates the codes
 * with Dia (engine/models/dia.h), decodes them with DAC (engine/models/dac.h), writes the audio
 * through libsndfile (worker/audio.h) and reports duration, decoder steps/s, the realtime
 * factor and peak memory. --codes-out saves the frames and codes as JSON so a run can be
 * compared with any other implementation. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "engine/models/dac.h"
#include "engine/models/dia.h"
#include "ops/store.h"
#include "worker/audio.h"
#include "worker/cli.h"

#define DEFAULT_MODEL "dia-1.6b"
#define DEFAULT_CODEC "dac-44khz"

void cmd_synth_help(void) {
    printf(
        "usage: voxq synth --text TEXT --out FILE [options]\n"
        "\n"
        "Synthesizes TEXT (Dia dialogue markup: \"[S1] Hello. [S2] Hi!\") into an audio file,\n"
        "on this machine, with a model from the artifact store.\n"
        "\n"
        "  --text TEXT          the text (UTF-8, at most %d ids after tags)\n"
        "  --out FILE           where to write the audio (written atomically)\n"
        "  --format F           wav | flac | ogg [from the FILE extension, else wav]\n"
        "  --model NAME         text-to-speech model in the store [%s]  (VOXQ_MODEL)\n"
        "  --variant V          auto | original | int8 | int4 | ...; auto = int8 when present,\n"
        "                       else original [auto]  (VOXQ_VARIANT)\n"
        "  --codec NAME         codec model, its 'original' variant is used; default: the\n"
        "                       model manifest's \"codec\", else %s  (VOXQ_CODEC)\n"
        "  --store DIR          store root [./store]  (VOXQ_STORE)\n"
        "  --device D           auto | cuda | cpu [auto]  (VOXQ_DEVICE)\n"
        "  --threads N          CPU threads, 0 = all [0]  (VOXQ_THREADS)\n"
        "  --seed N             sampling seed [random, printed]\n"
        "  --cfg-scale F        classifier-free guidance scale [3.0]\n"
        "  --temperature F      sampling temperature [1.2]\n"
        "  --top-p F            nucleus sampling [0.95]\n"
        "  --top-k N            top-k for the CFG filter and sampling [45]\n"
        "  --max-steps N        decoder steps at most (86 per second of audio) [3072]\n"
        "  --greedy             argmax instead of sampling\n"
        "  --codes-out FILE     write JSON: \"frames\" [T][9] as the decoder saw them (delayed)\n"
        "                       and \"codes\" [9][N] (undelayed, given to the codec)\n"
        "\n"
        "Prints the audio duration, decoder steps/s, realtime factor (steps/s divided by the\n"
        "codec's frames per second, 86.13 for 44.1 kHz DAC) and peak memory.\n"
        "Exit codes: 0 success, 1 failure of the work, 2 bad usage or input (bad text, unknown\n"
        "model or variant).\n",
        DIA_MAX_TEXT, DEFAULT_MODEL, DEFAULT_CODEC);
}

/* Everything the command line says. */
typedef struct synth_args {
    const char *text;
    const char *out;
    const char *format;
    const char *model;
    const char *variant;
    const char *codec;
    const char *store_root;
    const char *device;
    const char *codes_out;
    int threads;
    int have_seed;
    dia_gen_params gen;
} synth_args;

/* Parses a whole-string finite number in [lo, hi]. */
static int parse_float(const char *s, double lo, double hi, float *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) return -1;
    *out = (float)v;
    return 0;
}

/* Parses a whole-string unsigned 64-bit decimal (no sign: strtoull would wrap "-1"). */
static int parse_u64(const char *s, uint64_t *out) {
    char *end;
    if (*s == '-' || *s == '\0') return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) return -1;
    *out = (uint64_t)v;
    return 0;
}

/* Fills a from argv and the environment; returns 0 or 2 (usage error, already printed). */
static int parse_args(int argc, char **argv, synth_args *a) {
    memset(a, 0, sizeof *a);
    dia_gen_params_default(&a->gen);
    a->model = cli_env("VOXQ_MODEL", DEFAULT_MODEL);
    a->variant = cli_env("VOXQ_VARIANT", "auto");
    a->codec = cli_env("VOXQ_CODEC", NULL);
    a->store_root = store_default_root();
    a->device = cli_env("VOXQ_DEVICE", "auto");
    const char *threads = cli_env("VOXQ_THREADS", "0");
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i];
        int missing = 0;
        const char *v;
        long n;
#define FLAG(name) ((v = cli_flag_value(argc, argv, &i, name, &missing)) != NULL || missing)
        if (!strcmp(argv[i], "--greedy")) {
            a->gen.greedy = 1;
            continue;
        } else if (FLAG("--text")) {
            a->text = v;
        } else if (FLAG("--out")) {
            a->out = v;
        } else if (FLAG("--format")) {
            a->format = v;
        } else if (FLAG("--model")) {
            a->model = v;
        } else if (FLAG("--variant")) {
            a->variant = v;
        } else if (FLAG("--codec")) {
            a->codec = v;
        } else if (FLAG("--store")) {
            a->store_root = v;
        } else if (FLAG("--device")) {
            a->device = v;
        } else if (FLAG("--threads")) {
            threads = v;
        } else if (FLAG("--codes-out")) {
            a->codes_out = v;
        } else if (FLAG("--seed")) {
            if (v && parse_u64(v, &a->gen.seed)) goto bad_value;
            a->have_seed = 1;
        } else if (FLAG("--cfg-scale")) {
            if (v && parse_float(v, 0.0, 100.0, &a->gen.cfg_scale)) goto bad_value;
        } else if (FLAG("--temperature")) {
            if (v && parse_float(v, 1e-6, 100.0, &a->gen.temperature)) goto bad_value;
        } else if (FLAG("--top-p")) {
            if (v && parse_float(v, 1e-6, 1.0, &a->gen.top_p)) goto bad_value;
        } else if (FLAG("--top-k")) {
            if (v && cli_parse_long(v, 0, 1 << 20, &n)) goto bad_value;
            if (v) a->gen.top_k = a->gen.cfg_top_k = (int)n;
        } else if (FLAG("--max-steps")) {
            if (v && cli_parse_long(v, 1, 1 << 20, &n)) goto bad_value;
            if (v) a->gen.max_new_tokens = (int)n;
        } else {
            fprintf(stderr, "voxq synth: unknown option '%s' (see voxq help synth)\n", argv[i]);
            return 2;
        }
#undef FLAG
        if (missing) {
            fprintf(stderr, "voxq synth: %s needs a value\n", flag);
            return 2;
        }
        continue;
    bad_value:
        fprintf(stderr, "voxq synth: bad value '%s' for %s\n", v, flag);
        return 2;
    }
    long n;
    if (cli_parse_long(threads, 0, 4096, &n)) {
        fprintf(stderr, "voxq synth: bad thread count '%s'\n", threads);
        return 2;
    }
    a->threads = (int)n;
    if (!a->text || !a->out) {
        fprintf(stderr, "voxq synth: --text and --out are required (see voxq help synth)\n");
        return 2;
    }
    if (!a->have_seed) {
        /* A fresh seed per run, printed so the run can be repeated. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        a->gen.seed =
            ((uint64_t)ts.tv_sec * 1000000007u) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32);
    }
    return 0;
}

/* Set by SIGINT/SIGTERM: generation stops between decoder steps and nothing is written. */
static volatile sig_atomic_t stop_requested;

static void on_stop_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

/* Monotonic seconds, for the timings the command prints. */
static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Prints the variants the store holds for `model` (or the models it holds when it has none of
 * that name) after a "not found" message. */
static void list_available(const store *st, const char *model) {
    store_entry *e = NULL;
    size_t n = 0;
    eng_error err = {0};
    if (store_list(st, model, &e, &n, &err) == 0 && n > 0) {
        fprintf(stderr, "voxq synth: model '%s' has these variants:", model);
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, " %s%s", e[i].variant, e[i].state == STORE_VALID ? "" : " (damaged)");
        fprintf(stderr, "\n");
        free(e);
        return;
    }
    free(e);
    e = NULL;
    n = 0;
    if (store_list(st, NULL, &e, &n, &err) != 0 || n == 0) {
        fprintf(stderr,
                "voxq synth: the store at %s holds no models "
                "(add one with: voxq store import DIR --model NAME)\n",
                st->root);
    } else {
        fprintf(stderr, "voxq synth: the store at %s has no model '%s'; it holds:", st->root,
                model);
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, " %s/%s", e[i].model, e[i].variant);
        fprintf(stderr, "\n");
    }
    free(e);
}

/* Finds models/<model>/<variant> (variant "auto": int8 when valid, else original) and writes
 * its directory into dir and the chosen variant into chosen. Returns 0, 2 (absent: the
 * available variants are listed) or 1 (damaged or unreadable). */
static int resolve_variant(const store *st, const char *model, const char *variant, char *dir,
                           size_t dirlen, char *chosen, size_t chosenlen) {
    eng_error err = {0};
    if (!store_name_valid(model)) {
        fprintf(stderr, "voxq synth: invalid model name '%s' (allowed: [a-z0-9._-])\n", model);
        return 2;
    }
    if (strcmp(variant, "auto") == 0) {
        if (store_variant_exists_valid(st, model, "int8"))
            variant = "int8";
        else
            variant = "original";
    } else if (!store_name_valid(variant)) {
        fprintf(stderr, "voxq synth: invalid variant name '%s'\n", variant);
        return 2;
    }
    int state = store_variant_state(st, model, variant, &err);
    if (state < 0) {
        fprintf(stderr, "voxq synth: %s\n", err.msg);
        return 1;
    }
    if (state == STORE_ABSENT) {
        fprintf(stderr, "voxq synth: %s/%s is not in the store at %s\n", model, variant, st->root);
        list_available(st, model);
        return 2;
    }
    if (state == STORE_INVALID) {
        fprintf(stderr, "voxq synth: %s/%s is damaged: %s (check it with voxq store verify)\n",
                model, variant, err.msg);
        return 1;
    }
    if (store_variant_dir(st, model, variant, dir, dirlen, &err)) {
        fprintf(stderr, "voxq synth: %s\n", err.msg);
        return 1;
    }
    snprintf(chosen, chosenlen, "%s", variant);
    return 0;
}

/* The codec a model's manifest names ("codec": "dac-44khz"), or NULL; copied into buf. */
static const char *manifest_codec(const store *st, const char *model, const char *variant,
                                  char *buf, size_t n) {
    store_manifest man;
    eng_error err = {0};
    memset(&man, 0, sizeof man);
    if (store_manifest_read(st, model, variant, &man, &err)) return NULL;
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(man.json, "codec");
    const char *res = NULL;
    if (cJSON_IsString(c) && store_name_valid(c->valuestring)) {
        snprintf(buf, n, "%s", c->valuestring);
        res = buf;
    }
    store_manifest_free(&man);
    return res;
}

/* Writes the --codes-out JSON document. */
static int write_codes_json(const char *path, const synth_args *a, const char *variant,
                            const char *codec, const int32_t *frames, int n_steps_frames,
                            int channels, const int32_t *codes, int n_frames, int sample_rate,
                            int hop, int chose_eos) {
    cJSON *root = cJSON_CreateObject();
    if (!root) return -1;
    cJSON_AddStringToObject(root, "model", a->model);
    cJSON_AddStringToObject(root, "variant", variant);
    cJSON_AddStringToObject(root, "codec", codec);
    cJSON_AddStringToObject(root, "text", a->text);
    char seed[32];
    snprintf(seed, sizeof seed, "%" PRIu64, a->gen.seed);
    cJSON_AddStringToObject(root, "seed", seed);
    cJSON *params = cJSON_AddObjectToObject(root, "params");
    if (params) {
        cJSON_AddNumberToObject(params, "cfg_scale", a->gen.cfg_scale);
        cJSON_AddNumberToObject(params, "cfg_top_k", a->gen.cfg_top_k);
        cJSON_AddNumberToObject(params, "temperature", a->gen.temperature);
        cJSON_AddNumberToObject(params, "top_k", a->gen.top_k);
        cJSON_AddNumberToObject(params, "top_p", a->gen.top_p);
        cJSON_AddNumberToObject(params, "max_new_tokens", a->gen.max_new_tokens);
        cJSON_AddBoolToObject(params, "greedy", a->gen.greedy);
    }
    cJSON_AddBoolToObject(root, "chose_eos", chose_eos);
    cJSON_AddNumberToObject(root, "sample_rate", sample_rate);
    cJSON_AddNumberToObject(root, "hop_length", hop);
    cJSON_AddNumberToObject(root, "n_frames", n_frames);
    cJSON_AddNumberToObject(root, "samples", (double)n_frames * hop);
    cJSON *fr = cJSON_AddArrayToObject(root, "frames");
    for (int t = 0; fr && t < n_steps_frames; t++)
        cJSON_AddItemToArray(fr, cJSON_CreateIntArray(frames + (size_t)t * channels, channels));
    cJSON *cd = cJSON_AddArrayToObject(root, "codes");
    for (int c = 0; cd && c < channels; c++)
        cJSON_AddItemToArray(cd, cJSON_CreateIntArray(codes + (size_t)c * n_frames, n_frames));
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!text) return -1;
    FILE *f = fopen(path, "w");
    int rc = 0;
    if (!f || fputs(text, f) < 0 || fputc('\n', f) == EOF) rc = -1;
    if (f && fclose(f) != 0) rc = -1;
    free(text);
    return rc;
}

/* Progress on a terminal: one line, rewritten. */
static void show_progress(int steps, int max_steps, int final) {
    if (!isatty(2)) return;
    if (!final && steps % 16 != 0) return;
    fprintf(stderr, "\rvoxq synth: step %d / %d%s", steps, max_steps, final ? "\n" : "");
}

/* The work after argument parsing: returns the exit code. */
static int synth_run(synth_args *a) {
    int rc = 1;
    eng_error err = {0};
    audio_format fmt = AUDIO_FORMAT_WAV;
    if (a->format) {
        fmt = audio_format_parse(a->format);
        if (!fmt) {
            fprintf(stderr, "voxq synth: unknown format '%s' (wav, flac, ogg)\n", a->format);
            return 2;
        }
    } else if (audio_format_from_path(a->out)) {
        fmt = audio_format_from_path(a->out);
    }

    /* Text first: bad input fails before anything heavy is loaded. */
    int32_t *ids = malloc(DIA_MAX_TEXT * sizeof *ids);
    if (!ids) return 1;
    int n_ids = 0;
    if (dia_tokenize(a->text, strlen(a->text), ids, DIA_MAX_TEXT, &n_ids, &err)) {
        fprintf(stderr, "voxq synth: bad text: %s\n", err.msg);
        free(ids);
        return 2;
    }

    store st;
    struct stat sb;
    char models_dir[STORE_PATH_MAX + 16];
    snprintf(models_dir, sizeof models_dir, "%s/models", a->store_root);
    if (stat(models_dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        fprintf(stderr,
                "voxq synth: no store at %s (set VOXQ_STORE or --store; add models "
                "with voxq store import)\n",
                a->store_root);
        free(ids);
        return 2;
    }
    if (store_open(&st, a->store_root, &err)) {
        fprintf(stderr, "voxq synth: %s\n", err.msg);
        free(ids);
        return 1;
    }
    char dia_dir[STORE_PATH_MAX], dac_dir[STORE_PATH_MAX], variant[STORE_NAME_MAX];
    char codec_variant[STORE_NAME_MAX], codec_buf[STORE_NAME_MAX];
    int r = resolve_variant(&st, a->model, a->variant, dia_dir, sizeof dia_dir, variant,
                            sizeof variant);
    if (r) {
        free(ids);
        return r;
    }
    const char *codec = a->codec;
    if (!codec) codec = manifest_codec(&st, a->model, variant, codec_buf, sizeof codec_buf);
    if (!codec) codec = DEFAULT_CODEC;
    if ((r = resolve_variant(&st, codec, "original", dac_dir, sizeof dac_dir, codec_variant,
                             sizeof codec_variant))) {
        free(ids);
        return r;
    }

    eng_backend *be = NULL;
    dia_model *dia = NULL;
    dac_model *dac = NULL;
    dia_seq *seq = NULL;
    int32_t *codes = NULL;
    float *pcm = NULL;
    if (eng_backend_new(&be, a->device, a->threads, &err)) {
        fprintf(stderr, "voxq synth: device '%s': %s\n", a->device, err.msg);
        rc = strcmp(a->device, "auto") && strcmp(a->device, "cuda") && strcmp(a->device, "cpu") ? 2
                                                                                                : 1;
        goto out;
    }
    double t_load = now_seconds();
    dia_load_opts lo = {0};
    lo.max_batch = 1;
    lo.max_frames = a->gen.max_new_tokens + 1;
    lo.max_text = n_ids;
    if (dia_model_load(&dia, be, dia_dir, &lo, &err)) {
        fprintf(stderr, "voxq synth: loading %s/%s: %s\n", a->model, variant, err.msg);
        goto out;
    }
    if (dac_model_load(&dac, be, dac_dir, NULL, &err)) {
        fprintf(stderr, "voxq synth: loading codec %s: %s\n", codec, err.msg);
        goto out;
    }
    const dia_config *dcfg = dia_model_config(dia);
    const dac_config *ccfg = dac_model_config(dac);
    if (ccfg->n_codebooks != dcfg->channels) {
        fprintf(stderr, "voxq synth: codec %s has %d codebooks but %s emits %d channels\n", codec,
                ccfg->n_codebooks, a->model, dcfg->channels);
        goto out;
    }
    t_load = now_seconds() - t_load;

    double t_total = now_seconds();
    double t_enc = t_total;
    if (dia_seq_start(dia, ids, n_ids, &a->gen, &seq, &err)) {
        fprintf(stderr, "voxq synth: %s\n", err.msg);
        rc = err.code == ENG_EINVAL ? 2 : 1;
        goto out;
    }
    t_enc = now_seconds() - t_enc;
    double t_gen = now_seconds();
    int steps = 0;
    while (!dia_seq_done(seq)) {
        if (stop_requested) {
            fprintf(stderr, "\nvoxq synth: interrupted after %d steps; nothing written\n", steps);
            goto out;
        }
        if (dia_step(dia, &seq, 1, &err)) {
            fprintf(stderr, "voxq synth: decoder step %d: %s\n", steps, err.msg);
            goto out;
        }
        steps++;
        show_progress(steps, a->gen.max_new_tokens, 0);
    }
    show_progress(steps, a->gen.max_new_tokens, 1);
    t_gen = now_seconds() - t_gen;

    int seq_len = dia_seq_len(seq);
    int n_frames = 0;
    /* The undelayed codes never outnumber the delayed frames. */
    codes = malloc((size_t)seq_len * dcfg->channels * sizeof *codes);
    if (!codes) goto out;
    if (dia_seq_codes(seq, codes, seq_len, &n_frames, &err)) {
        fprintf(stderr, "voxq synth: %s\n", err.msg);
        goto out;
    }
    /* Rows come with stride seq_len; the codec wants them packed, [channels][n_frames]. */
    for (int c = 1; c < dcfg->channels; c++)
        memmove(codes + (size_t)c * n_frames, codes + (size_t)c * seq_len,
                (size_t)n_frames * sizeof *codes);

    double t_dec = now_seconds();
    int64_t samples = dac_samples(dac, n_frames);
    pcm = malloc((size_t)(samples > 0 ? samples : 1) * sizeof *pcm);
    if (!pcm) goto out;
    if (dac_decode(dac, codes, n_frames, pcm, &err)) {
        fprintf(stderr, "voxq synth: codec: %s\n", err.msg);
        goto out;
    }
    t_dec = now_seconds() - t_dec;
    t_total = now_seconds() - t_total;

    char msg[512];
    if (stop_requested) {
        fprintf(stderr, "voxq synth: interrupted; nothing written\n");
        goto out;
    }
    if (audio_write(a->out, pcm, samples, ccfg->sampling_rate, fmt, msg, sizeof msg)) {
        fprintf(stderr, "voxq synth: %s\n", msg);
        goto out;
    }
    if (a->codes_out &&
        write_codes_json(a->codes_out, a, variant, codec, dia_seq_frames(seq), seq_len,
                         dcfg->channels, codes, n_frames, ccfg->sampling_rate, ccfg->hop_length,
                         dia_seq_chose_eos(seq))) {
        fprintf(stderr, "voxq synth: cannot write %s: %s\n", a->codes_out, strerror(errno));
        goto out;
    }

    double frame_rate = (double)ccfg->sampling_rate / ccfg->hop_length;
    double steps_per_s = t_gen > 0 ? steps / t_gen : 0.0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    eng_mem_stats ms = {0};
    be->ops->mem_stats(be, &ms);
    printf("wrote %s: %.2f s of audio (%" PRId64 " samples, %d Hz, %s), %d frames%s\n", a->out,
           (double)samples / ccfg->sampling_rate, samples, ccfg->sampling_rate,
           audio_format_name(fmt), n_frames,
           dia_seq_chose_eos(seq) ? "" : " (stopped at --max-steps, no EOS)");
    printf("model %s/%s, codec %s, device %s, seed %" PRIu64 "\n", a->model, variant, codec,
           be->ops->name, a->gen.seed);
    printf("decoder: %d steps in %.3f s = %.1f steps/s, realtime factor %.2fx "
           "(steps/s / %.2f)\n",
           steps, t_gen, steps_per_s, steps_per_s / frame_rate, frame_rate);
    printf("load %.2f s, encoder %.3f s, codec decode %.3f s, text to audio %.3f s; "
           "peak RSS %.1f MiB, backend peak %.1f MiB\n",
           t_load, t_enc, t_dec, t_total, ru.ru_maxrss / 1024.0, ms.peak / 1048576.0);
    rc = 0;
out:
    if (seq) dia_seq_release(dia, seq);
    free(pcm);
    free(codes);
    dac_model_free(dac);
    dia_model_free(dia);
    eng_backend_free(be);
    store_close(&st);
    free(ids);
    return rc;
}

int cmd_synth(int argc, char **argv) {
    synth_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc;
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    /* A parent may start us with them blocked; a stop must still reach the loop. */
    sigset_t stops, old_mask;
    sigemptyset(&stops);
    sigaddset(&stops, SIGINT);
    sigaddset(&stops, SIGTERM);
    sigprocmask(SIG_UNBLOCK, &stops, &old_mask);
    rc = synth_run(&a);
    sigprocmask(SIG_SETMASK, &old_mask, NULL);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    return rc;
}
