/* bench.c - the parent side of `voxq bench --compare`: one child process per variant, then
 * results.json and report.html (see bench.h). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ops/bench.h"

/* mkdir that accepts an existing directory. */
static int ensure_dir(const char *path, eng_error *err) {
    if (mkdir(path, 0755) == 0 || errno == EEXIST) {
        struct stat sb;
        if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) return 0;
    }
    return eng_errorf(err, ENG_EIO, "%s: cannot create directory: %s", path, strerror(errno));
}

/* Reads a whole file (NUL-terminated, malloc'd) or NULL. */
static char *read_all(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t len = 0, cap = 0, got;
    char chunk[8192];
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (len + got + 1 > cap) {
            cap = (len + got + 1) * 2;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        memcpy(buf + len, chunk, got);
        len += got;
    }
    fclose(f);
    if (!buf)
        buf = calloc(1, 1);
    else
        buf[len] = '\0';
    return buf;
}

/* Writes text to path through a temporary file and a rename, so a reader never sees half. */
static int write_atomic(const char *path, const char *text, eng_error *err) {
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof tmp)
        return eng_errorf(err, ENG_EINVAL, "%s: path too long", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return eng_errorf(err, ENG_EIO, "%s: %s", tmp, strerror(errno));
    int ok = fputs(text, f) >= 0;
    if (fclose(f) != 0) ok = 0;
    if (!ok || rename(tmp, path) != 0) {
        int e = errno;
        remove(tmp);
        return eng_errorf(err, ENG_EIO, "%s: %s", path, strerror(e));
    }
    return 0;
}

/* Runs `SELF bench --child VARIANT ...` and waits for it. Returns the child's exit code, or -1
 * when it could not start or died by a signal (*sig set). */
static int run_child(const bench_opts *o, int index, const char *json_path, int *sig) {
    char threads[16], runs[16], steps[16], seed[32], conc[128] = "";
    snprintf(threads, sizeof threads, "%d", o->threads);
    snprintf(runs, sizeof runs, "%d", o->runs);
    snprintf(steps, sizeof steps, "%d", o->steps);
    snprintf(seed, sizeof seed, "%" PRIu64, o->seed);
    for (int i = 0; i < o->nconcurrency; i++) {
        size_t n = strlen(conc);
        snprintf(conc + n, sizeof conc - n, "%s%d", i ? "," : "", o->concurrency[i]);
    }
    const char *argv[48];
    int k = 0;
    argv[k++] = o->self_exe;
    argv[k++] = "bench";
    argv[k++] = "--child";
    argv[k++] = o->variants[index];
    argv[k++] = "--child-dir";
    argv[k++] = o->variant_dirs[index];
    argv[k++] = "--child-json";
    argv[k++] = json_path;
    argv[k++] = "--model";
    argv[k++] = o->model;
    argv[k++] = "--codec";
    argv[k++] = o->codec;
    argv[k++] = "--codec-dir";
    argv[k++] = o->codec_dir;
    if (o->original_dir) {
        argv[k++] = "--original-dir";
        argv[k++] = o->original_dir;
    }
    argv[k++] = "--out";
    argv[k++] = o->out_dir;
    if (o->prompts_file) {
        argv[k++] = "--prompts";
        argv[k++] = o->prompts_file;
    }
    argv[k++] = "--device";
    argv[k++] = o->device;
    argv[k++] = "--threads";
    argv[k++] = threads;
    argv[k++] = "--runs";
    argv[k++] = runs;
    argv[k++] = "--steps";
    argv[k++] = steps;
    argv[k++] = "--seed";
    argv[k++] = seed;
    argv[k++] = "--concurrency";
    argv[k++] = o->nconcurrency ? conc : "none";
    if (!o->quality) argv[k++] = "--no-quality";
    argv[k] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        execv(o->self_exe, (char *const *)argv);
        fprintf(stderr, "voxq bench: cannot start %s: %s\n", o->self_exe, strerror(errno));
        _exit(127);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) return -1;
    if (WIFSIGNALED(status)) {
        *sig = WTERMSIG(status);
        return -1;
    }
    return WEXITSTATUS(status);
}

/* The document's head: what was compared and how. */
static cJSON *results_head(const bench_opts *o, const quality_prompt *prompts, int np) {
    cJSON *r = cJSON_CreateObject();
    if (!r) return NULL;
    cJSON_AddStringToObject(r, "tool", "voxq bench");
    cJSON_AddStringToObject(r, "version", VOXQ_VERSION);
    char when[64];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    cJSON_AddStringToObject(r, "created", when);
    cJSON_AddStringToObject(r, "model", o->model);
    cJSON_AddStringToObject(r, "codec", o->codec);
    cJSON_AddStringToObject(r, "device", o->device);
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    cJSON_AddStringToObject(r, "host", host);
    cJSON *s = cJSON_AddObjectToObject(r, "settings");
    cJSON_AddNumberToObject(s, "runs", o->runs);
    cJSON_AddNumberToObject(s, "steps", o->steps);
    cJSON_AddNumberToObject(s, "seed", (double)o->seed);
    cJSON_AddNumberToObject(s, "threads", o->threads);
    cJSON_AddBoolToObject(s, "quality", o->quality);
    cJSON_AddStringToObject(s, "prompts", o->prompts_file ? o->prompts_file : "built-in");
    cJSON *conc = cJSON_AddArrayToObject(s, "concurrency");
    for (int i = 0; i < o->nconcurrency; i++)
        cJSON_AddItemToArray(conc, cJSON_CreateNumber(o->concurrency[i]));
    cJSON *pa = cJSON_AddArrayToObject(r, "prompts");
    for (int i = 0; i < np; i++) {
        cJSON *p = cJSON_CreateObject();
        cJSON_AddStringToObject(p, "name", prompts[i].name);
        cJSON_AddStringToObject(p, "text", prompts[i].text);
        cJSON_AddNumberToObject(p, "seed", (double)(o->seed + (uint64_t)i));
        cJSON_AddItemToArray(pa, p);
    }
    cJSON_AddArrayToObject(r, "variants");
    return r;
}

int bench_compare(const bench_opts *o, eng_error *err) {
    quality_prompt prompts[QUALITY_MAX_PROMPTS];
    char *prompt_buf = NULL;
    int np = 0, rc;
    if (o->nvariants < 1 || o->nvariants > BENCH_MAX_VARIANTS)
        return eng_errorf(err, ENG_EINVAL, "bench: %d variants outside [1, %d]", o->nvariants,
                          BENCH_MAX_VARIANTS);
    if ((rc = bench_load_prompts(o, prompts, QUALITY_MAX_PROMPTS, &np, &prompt_buf, err)))
        return rc;
    char path[4096];
    snprintf(path, sizeof path, "%s/audio", o->out_dir);
    cJSON *results = NULL;
    if ((rc = ensure_dir(o->out_dir, err)) || (rc = ensure_dir(path, err))) goto out;
    results = results_head(o, prompts, np);
    if (!results) {
        rc = eng_errorf(err, ENG_ENOMEM, "bench: out of memory");
        goto out;
    }
    cJSON *variants = cJSON_GetObjectItem(results, "variants");
    int failed = 0;
    for (int i = 0; i < o->nvariants; i++) {
        char json_path[4096];
        snprintf(json_path, sizeof json_path, "%s/.variant-%s.json", o->out_dir, o->variants[i]);
        remove(json_path);
        fprintf(stderr, "voxq bench: measuring %s/%s in a child process\n", o->model,
                o->variants[i]);
        int sig = 0;
        int code = run_child(o, i, json_path, &sig);
        char *text = code == 0 ? read_all(json_path) : NULL;
        cJSON *v = text ? cJSON_Parse(text) : NULL;
        free(text);
        remove(json_path);
        if (!v) {
            char why[160];
            if (code == 0)
                snprintf(why, sizeof why, "the child wrote no readable result");
            else if (code < 0 && sig)
                snprintf(why, sizeof why, "the child was killed by signal %d", sig);
            else if (code < 0)
                snprintf(why, sizeof why, "the child could not be started");
            else
                snprintf(why, sizeof why,
                         "the child failed with exit code %d (its stderr "
                         "says why)",
                         code);
            fprintf(stderr, "voxq bench: %s: %s\n", o->variants[i], why);
            v = cJSON_CreateObject();
            cJSON_AddStringToObject(v, "name", o->variants[i]);
            cJSON_AddStringToObject(v, "error", why);
            failed = 1;
        }
        cJSON_AddItemToArray(variants, v);
    }
    char *text = cJSON_Print(results);
    if (!text) {
        rc = eng_errorf(err, ENG_ENOMEM, "bench: out of memory");
        goto out;
    }
    snprintf(path, sizeof path, "%s/results.json", o->out_dir);
    rc = write_atomic(path, text, err);
    free(text);
    if (rc) goto out;
    snprintf(path, sizeof path, "%s/report.html", o->out_dir);
    if ((rc = bench_report_html(results, path, err))) goto out;
    rc = failed ? 1 : 0;
out:
    cJSON_Delete(results);
    free(prompt_buf);
    return rc;
}
