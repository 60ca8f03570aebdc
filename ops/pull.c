/* pull.c - `voxq store pull`: plans which files of a repository make the checkpoint, downloads
 * them in parallel (ops/pull_fetch.c does the HTTP), validates them and publishes them through
 * the store's staging path under the variant's lock. */
#include "ops/pull.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>

#include "engine/safetensors.h"
#include "ops/pull_internal.h"

#define INDEX_NAME "model.safetensors.index.json"
#define WEIGHTS_NAME "model.safetensors"
#define JSON_MAX_BYTES (64u << 20)
#define DEFAULT_JOBS 4
#define DEFAULT_RETRIES 5
#define DEFAULT_RETRY_DELAY_MS 1000
#define DEFAULT_STALL_S 60

/* ---- names and defaults ---- */

static const struct {
    const char *model, *repo;
} default_repos[] = {
    {"dia-1.6b", "nari-labs/Dia-1.6B-0626"},
    {"dac-44khz", "descript/dac_44khz"},
};

const char *pull_default_repo(const char *model) {
    for (size_t i = 0; model && i < sizeof default_repos / sizeof default_repos[0]; i++)
        if (!strcmp(default_repos[i].model, model)) return default_repos[i].repo;
    return NULL;
}

const char *pull_strerror(int code) {
    if (code == PULL_EAUTH) return "refused by the server";
    return store_strerror(code);
}

static int repo_part_valid(const char *p, size_t n) {
    if (n == 0 || n > 96 || p[0] == '.' || p[0] == '-') return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (!isalnum(ch) && ch != '.' && ch != '_' && ch != '-') return 0;
        if (ch == '.' && i + 1 < n && p[i + 1] == '.') return 0;
    }
    return 1;
}

int pull_repo_valid(const char *repo) {
    if (!repo) return 0;
    const char *slash = strchr(repo, '/');
    if (!slash) return repo_part_valid(repo, strlen(repo));
    return repo_part_valid(repo, (size_t)(slash - repo)) &&
           repo_part_valid(slash + 1, strlen(slash + 1));
}

/* A revision goes into the URL percent-encoded, but refuse what no branch, tag or commit can
 * hold: blanks, control bytes, "..". */
static int revision_valid(const char *rev) {
    size_t n = strlen(rev);
    if (n == 0 || n >= PULL_REVISION_MAX || strstr(rev, "..")) return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)rev[i] <= ' ' || rev[i] == 0x7f) return 0;
    return 1;
}

static int is_commit_hex(const char *s) {
    if (strlen(s) != 40) return 0;
    for (int i = 0; i < 40; i++)
        if (!isxdigit((unsigned char)s[i])) return 0;
    return 1;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result;

static void init_curl(void) {
    curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* Fills the context from the options and the environment (HF_ENDPOINT, HF_TOKEN). */
static int ctx_init(pull_ctx *c, const store *s, const char *repo, const char *model,
                    const pull_options *opt, eng_error *err) {
    memset(c, 0, sizeof *c);
    c->opt = opt;
    if (!pull_repo_valid(repo))
        return eng_errorf(err, ENG_EINVAL, "invalid repository '%s' (want owner/name)",
                          repo ? repo : "(null)");
    if (!store_name_valid(model))
        return eng_errorf(err, ENG_EINVAL, "invalid model name '%s' ([a-z0-9._-])",
                          model ? model : "(null)");
    const char *rev = opt->revision && opt->revision[0] ? opt->revision : PULL_DEFAULT_REVISION;
    if (!revision_valid(rev)) return eng_errorf(err, ENG_EINVAL, "invalid revision '%s'", rev);
    const char *endpoint = opt->endpoint;
    if (!endpoint || !endpoint[0]) endpoint = getenv("HF_ENDPOINT");
    if (!endpoint || !endpoint[0]) endpoint = PULL_DEFAULT_ENDPOINT;
    if ((strncmp(endpoint, "https://", 8) && strncmp(endpoint, "http://", 7)) ||
        strlen(endpoint) >= sizeof c->endpoint || strpbrk(endpoint, " \r\n"))
        return eng_errorf(err, ENG_EINVAL, "invalid endpoint '%s' (want http(s)://host[/path])",
                          endpoint);
    snprintf(c->endpoint, sizeof c->endpoint, "%s", endpoint);
    for (size_t n = strlen(c->endpoint); n > 8 && c->endpoint[n - 1] == '/'; n--)
        c->endpoint[n - 1] = '\0';
    const char *token = opt->token;
    if (!token) token = getenv("HF_TOKEN");
    if (!token || !token[0]) token = opt->token ? "" : getenv("HUGGING_FACE_HUB_TOKEN");
    if (token && token[0]) {
        if (strpbrk(token, "\r\n") ||
            snprintf(c->auth_header, sizeof c->auth_header, "Authorization: Bearer %s", token) >=
                (int)sizeof c->auth_header)
            return eng_errorf(err, ENG_EINVAL, "HF_TOKEN is not a usable token");
    }
    snprintf(c->repo, sizeof c->repo, "%s", repo);
    pull_set_revision(c, rev);
    if (snprintf(c->dir, sizeof c->dir, "%s/tmp/pull.%s", s->root, model) >= (int)sizeof c->dir)
        return eng_errorf(err, ENG_EINVAL, "%s: store path too long", s->root);
    c->retries = opt->retries < 0 ? DEFAULT_RETRIES : opt->retries;
    c->retry_delay_ms = opt->retry_delay_ms > 0 ? opt->retry_delay_ms : DEFAULT_RETRY_DELAY_MS;
    c->stall_s = opt->stall_s > 0 ? opt->stall_s : DEFAULT_STALL_S;
    atomic_init(&c->stop, 0);
    pthread_once(&curl_once, init_curl);
    if (curl_init_result != CURLE_OK)
        return eng_errorf(err, ENG_EIO, "curl_global_init: %s",
                          curl_easy_strerror(curl_init_result));
    if (pthread_mutex_init(&c->lock, NULL) != 0)
        return eng_errorf(err, ENG_ENOMEM, "pull: mutex init failed");
    return 0;
}

/* The path of a file in the download directory (c->dir is short enough for any store file
 * name: the store's own limits make it so). */
static int download_path(const pull_ctx *c, const char *name, const char *suffix, char *buf,
                         size_t n, eng_error *err) {
    if (snprintf(buf, n, "%s/%s%s", c->dir, name, suffix) >= (int)n)
        return eng_errorf(err, ENG_EINVAL, "%s/%s: path too long", c->dir, name);
    return 0;
}

/* ---- the plan: which files, how big ---- */

typedef struct plan {
    pull_file *files; /* small files first, then the weights */
    size_t n;
} plan;

static int plan_add(plan *p, const char *name, const pull_remote *r, eng_error *err) {
    for (size_t i = 0; i < p->n; i++)
        if (!strcmp(p->files[i].name, name)) return 0;
    if (!store_file_name_valid(name) || !strcmp(name, STORE_MANIFEST))
        return eng_errorf(err, ENG_EFORMAT, "the repository names an unusable file '%.100s'", name);
    pull_file *grown = realloc(p->files, (p->n + 1) * sizeof *grown);
    if (!grown) return eng_errorf(err, ENG_ENOMEM, "pull: no memory");
    p->files = grown;
    pull_file *f = &p->files[p->n++];
    memset(f, 0, sizeof *f);
    snprintf(f->name, sizeof f->name, "%s", name);
    f->remote = *r;
    return 0;
}

/* Asks for a file's metadata. *present is 0 for a 404 when the file is optional; any other
 * failure status is an error. */
static int meta_of(pull_ctx *c, const char *name, int optional, pull_remote *r, int *present,
                   eng_error *err) {
    int rc = pull_fetch_meta(c, name, r, err);
    if (rc) return rc;
    *present = r->status >= 200 && r->status < 400;
    if (!*present && !(optional && r->status == 404 && strcmp(r->error_code, "RepoNotFound") &&
                       strcmp(r->error_code, "RevisionNotFound")))
        return pull_status_error(c, name, r, err);
    if (*present && !r->have_size)
        return eng_errorf(err, ENG_EFORMAT, "%s: the server gave no size for %s (HTTP %ld)",
                          c->repo, name, r->status);
    return 0;
}

static int read_json(const char *path, cJSON **out, eng_error *err) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return eng_errorf(err, ENG_EIO, "%s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(fp), &sb) != 0 || sb.st_size > JSON_MAX_BYTES) {
        fclose(fp);
        return eng_errorf(err, ENG_EFORMAT, "%s: larger than %u bytes", path, JSON_MAX_BYTES);
    }
    char *text = malloc((size_t)sb.st_size + 1);
    size_t got = text ? fread(text, 1, (size_t)sb.st_size, fp) : 0;
    fclose(fp);
    if (!text) return eng_errorf(err, ENG_ENOMEM, "%s: no memory", path);
    *out = cJSON_ParseWithLength(text, got);
    free(text);
    if (!cJSON_IsObject(*out)) {
        cJSON_Delete(*out);
        *out = NULL;
        return eng_errorf(err, ENG_EFORMAT, "%s: not a JSON object", path);
    }
    return 0;
}

/* Adds the shards an index names (validated, each once). */
static int add_shards(pull_ctx *c, plan *p, eng_error *err) {
    char path[STORE_PATH_MAX];
    cJSON *doc = NULL;
    int rc = download_path(c, INDEX_NAME, "", path, sizeof path, err);
    if (!rc) rc = read_json(path, &doc, err);
    if (rc) return rc;
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(doc, "weight_map"), *entry;
    if (!cJSON_IsObject(map) || !map->child)
        rc = eng_errorf(err, ENG_EFORMAT, "%s: 'weight_map' is missing or empty", INDEX_NAME);
    cJSON_ArrayForEach(entry, map) {
        if (rc) break;
        if (!cJSON_IsString(entry) || !store_file_name_valid(entry->valuestring)) {
            rc = eng_errorf(err, ENG_EFORMAT, "%s: tensor '%.100s' names an invalid shard",
                            INDEX_NAME, entry->string);
            break;
        }
        int known = 0, present;
        for (size_t i = 0; i < p->n; i++)
            known |= !strcmp(p->files[i].name, entry->valuestring);
        if (known) continue;
        pull_remote r;
        if (!(rc = meta_of(c, entry->valuestring, 0, &r, &present, err)))
            rc = plan_add(p, entry->valuestring, &r, err);
    }
    cJSON_Delete(doc);
    return rc;
}

/* Bytes still to come: the plan's total less what complete or partial files already hold. */
static int check_space(pull_ctx *c, const plan *p, eng_error *err) {
    uint64_t need = 0;
    for (size_t i = 0; i < p->n; i++) {
        char path[STORE_PATH_MAX];
        struct stat sb;
        uint64_t have = 0;
        int rc = download_path(c, p->files[i].name, "", path, sizeof path, err);
        if (rc) return rc;
        if (stat(path, &sb) == 0)
            have = (uint64_t)sb.st_size;
        else if (!download_path(c, p->files[i].name, ".part", path, sizeof path, NULL) &&
                 stat(path, &sb) == 0)
            have = (uint64_t)sb.st_size;
        if (have < p->files[i].remote.size) need += p->files[i].remote.size - have;
    }
    struct statvfs vfs;
    if (statvfs(c->dir, &vfs) != 0) return 0; /* unknown: let the writes tell */
    uint64_t avail = (uint64_t)vfs.f_bavail * vfs.f_frsize;
    if (avail < need)
        return eng_errorf(err, ENG_EIO,
                          "%s: needs %.2f GB more for %s, only %.2f GB free on the store volume",
                          c->dir, need / 1e9, c->repo, avail / 1e9);
    return 0;
}

/* ---- parallel download ---- */

typedef struct pool {
    pull_ctx *c;
    plan *p;
    size_t next, end;
    pthread_mutex_t lock;
    int rc;
    eng_error err;
} pool;

/* Keeps the most useful failure: a real error beats the "stopped" of the files it stopped. */
static void pool_fail(pool *pl, int rc, const eng_error *err) {
    pthread_mutex_lock(&pl->lock);
    if (!pl->rc || (pl->rc == ENG_ECANCELLED && rc != ENG_ECANCELLED)) {
        pl->rc = rc;
        pl->err = *err;
    }
    pthread_mutex_unlock(&pl->lock);
    atomic_store(&pl->c->stop, 1);
}

static void *pool_thread(void *arg) {
    pool *pl = arg;
    for (;;) {
        pthread_mutex_lock(&pl->lock);
        size_t i = pl->next < pl->end ? pl->next++ : pl->end;
        pthread_mutex_unlock(&pl->lock);
        if (i >= pl->end) return NULL;
        eng_error err = {0};
        int rc = pull_fetch_file(pl->c, &pl->p->files[i], &err);
        if (rc) pool_fail(pl, rc, &err);
    }
}

/* Downloads files [begin, end) of the plan with up to `jobs` threads. */
static int fetch_range(pull_ctx *c, plan *p, size_t begin, size_t end, int jobs, eng_error *err) {
    pool pl = {.c = c, .p = p, .next = begin, .end = end};
    pthread_mutex_init(&pl.lock, NULL);
    size_t nthreads = end - begin < (size_t)jobs ? end - begin : (size_t)jobs;
    pthread_t threads[64];
    size_t started = 0;
    if (nthreads > 64) nthreads = 64;
    for (; started + 1 < nthreads; started++)
        if (pthread_create(&threads[started], NULL, pool_thread, &pl) != 0) break;
    pool_thread(&pl); /* this thread works too */
    for (size_t i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    pthread_mutex_destroy(&pl.lock);
    if (pl.rc && err) *err = pl.err;
    return pl.rc;
}

/* ---- validation and publishing ---- */

/* Everything a loader will trust: config.json (and generation_config.json) parse, the weights
 * open as a safetensors checkpoint (headers, offsets, index against shards). */
static int validate_download(pull_ctx *c, const plan *p, eng_error *err) {
    char path[STORE_PATH_MAX];
    for (size_t i = 0; i < p->n; i++) {
        size_t len = strlen(p->files[i].name);
        if (len > 5 && !strcmp(p->files[i].name + len - 5, ".json")) {
            cJSON *doc = NULL;
            int rc = download_path(c, p->files[i].name, "", path, sizeof path, err);
            if (!rc) rc = read_json(path, &doc, err);
            cJSON_Delete(doc);
            if (rc) return rc;
        }
    }
    st_model *m = NULL;
    int rc = st_model_open(&m, c->dir, err);
    if (rc) eng_error_prefix(err, "%s: downloaded weights are invalid", c->repo);
    st_model_close(m);
    return rc;
}

/* Removes the download directory: the files it holds, the sidecars and partial files. */
static void remove_download_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        char path[STORE_PATH_MAX];
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        if (snprintf(path, sizeof path, "%s/%s", dir, de->d_name) < (int)sizeof path) unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

static cJSON *manifest_extra(const pull_ctx *c, const char *asked_revision) {
    cJSON *extra = cJSON_CreateObject();
    cJSON *src = extra ? cJSON_AddObjectToObject(extra, "source") : NULL;
    if (!src || !cJSON_AddStringToObject(src, "repo", c->repo) ||
        !cJSON_AddStringToObject(src, "revision", asked_revision) ||
        !cJSON_AddStringToObject(src, "commit", is_commit_hex(c->revision) ? c->revision : "") ||
        !cJSON_AddStringToObject(src, "endpoint", c->endpoint) ||
        !cJSON_AddStringToObject(extra, "method", "pull") ||
        !cJSON_AddObjectToObject(extra, "params")) {
        cJSON_Delete(extra);
        return NULL;
    }
    return extra;
}

/* Moves the verified files into the staging directory and commits it. */
static int publish(pull_ctx *c, const plan *p, store_stage *stage, const char *asked_revision,
                   eng_error *err) {
    for (size_t i = 0; i < p->n; i++) {
        char from[STORE_PATH_MAX], to[STORE_PATH_MAX];
        int rc = store_stage_path(stage, p->files[i].name, to, sizeof to, err);
        if (!rc) rc = download_path(c, p->files[i].name, "", from, sizeof from, err);
        if (rc) return rc;
        if (rename(from, to) != 0)
            return eng_errorf(err, ENG_EIO, "rename %s -> %s: %s", from, to, strerror(errno));
    }
    remove_download_dir(c->dir); /* only the sidecars are left; the lock is still ours */
    cJSON *extra = manifest_extra(c, asked_revision);
    if (!extra) return eng_errorf(err, ENG_ENOMEM, "pull: no memory for the manifest");
    pull_logf(c, "publishing %zu files as %s/original (hashing every byte once more)", p->n,
              stage->model);
    int rc = store_stage_commit(stage, extra, NULL, NULL, err);
    cJSON_Delete(extra);
    return rc;
}

/* Resolves the plan: pins the revision to a commit, fetches the small files, reads the index. */
static int make_plan(pull_ctx *c, plan *p, size_t *nsmall, eng_error *err) {
    pull_remote r;
    int present, rc;
    if ((rc = meta_of(c, "config.json", 0, &r, &present, err))) return rc;
    if (is_commit_hex(r.commit) && strcmp(r.commit, c->revision)) {
        pull_logf(c, "%s@%s is commit %s", c->repo, c->revision, r.commit);
        pull_set_revision(c, r.commit);
    }
    if ((rc = plan_add(p, "config.json", &r, err))) return rc;
    if ((rc = meta_of(c, "generation_config.json", 1, &r, &present, err))) return rc;
    if (present && (rc = plan_add(p, "generation_config.json", &r, err))) return rc;
    if ((rc = meta_of(c, INDEX_NAME, 1, &r, &present, err))) return rc;
    int sharded = present;
    if (sharded && (rc = plan_add(p, INDEX_NAME, &r, err))) return rc;
    *nsmall = p->n;
    if (!sharded) {
        if ((rc = meta_of(c, WEIGHTS_NAME, 0, &r, &present, err))) return rc;
        return plan_add(p, WEIGHTS_NAME, &r, err);
    }
    /* The index is needed to know the shards: fetch the small files now. */
    c->all_total = 0;
    for (size_t i = 0; i < p->n; i++)
        c->all_total += p->files[i].remote.size;
    if ((rc = fetch_range(c, p, 0, p->n, 1, err))) return rc;
    return add_shards(c, p, err);
}

int pull_model(const store *s, const char *repo, const char *model, const pull_options *opt,
               pull_result *res, eng_error *err) {
    pull_options defaults = {0};
    if (!opt) opt = &defaults, defaults.retries = -1;
    if (res) memset(res, 0, sizeof *res);
    pull_ctx c;
    int rc = ctx_init(&c, s, repo, model, opt, err);
    if (rc) return rc;
    char asked_revision[PULL_REVISION_MAX];
    snprintf(asked_revision, sizeof asked_revision, "%s", c.revision);
    store_stage stage;
    rc = store_stage_begin(s, model, "original", opt->flags, &stage, err);
    if (rc) {
        pthread_mutex_destroy(&c.lock);
        return rc;
    }
    plan p = {0};
    size_t nsmall = 0;
    if (mkdir(c.dir, 0755) != 0 && errno != EEXIST) {
        rc = eng_errorf(err, ENG_EIO, "%s: mkdir: %s", c.dir, strerror(errno));
        goto out;
    }
    pull_logf(&c, "resolving %s@%s at %s", c.repo, c.revision, c.endpoint);
    if ((rc = make_plan(&c, &p, &nsmall, err))) goto out;
    c.all_total = 0;
    for (size_t i = 0; i < p.n; i++)
        c.all_total += p.files[i].remote.size;
    double total = (double)c.all_total;
    pull_logf(&c, "%zu files, %.2f %s, into %s", p.n, total >= 1e9 ? total / 1e9 : total / 1e6,
              total >= 1e9 ? "GB" : "MB", c.dir);
    if ((rc = check_space(&c, &p, err))) goto out;
    int jobs = opt->jobs > 0 ? opt->jobs : DEFAULT_JOBS;
    if ((rc = fetch_range(&c, &p, 0, p.n, jobs, err))) goto out;
    if ((rc = validate_download(&c, &p, err))) goto out;
    rc = publish(&c, &p, &stage, asked_revision, err);
    if (rc == 0 && res) {
        if (is_commit_hex(c.revision)) memcpy(res->commit, c.revision, 41);
        res->nfiles = (int)p.n;
        res->total_bytes = c.all_total;
        for (size_t i = 0; i < p.n; i++) {
            res->fetched_bytes += p.files[i].fetched;
            res->resumed += p.files[i].resumed;
        }
    }
out:
    /* Partial files stay for the next pull only when the failure was the network's, the disk's
     * or a stop; after a refusal or corruption nothing in them can be reused. (After a commit
     * the directory is gone already.) Cleaned while the lock is still held. */
    if (rc && rc != ENG_EIO && rc != ENG_ECANCELLED)
        remove_download_dir(c.dir);
    else if (rc && rmdir(c.dir) != 0) /* rmdir: only when nothing arrived */
        pull_logf(&c, "partial download kept in %s: the next pull resumes it", c.dir);
    store_stage_abort(&stage); /* a no-op after commit */
    free(p.files);
    pthread_mutex_destroy(&c.lock);
    return rc;
}

int pull_model_if_missing(const store *s, const char *model, const char *repo, const char *revision,
                          const pull_options *opt, int *pulled, eng_error *err) {
    if (pulled) *pulled = 0;
    if (!repo || !repo[0]) repo = pull_default_repo(model);
    store_entry *list = NULL;
    size_t n = 0;
    int rc = store_list(s, model, &list, &n, err);
    if (rc) return rc;
    int have = 0;
    for (size_t i = 0; i < n; i++)
        have |= list[i].state == STORE_VALID;
    free(list);
    if (have) return 0;
    if (!repo)
        return eng_errorf(err, ENG_EINVAL,
                          "model %s is not in the store and no repository is known for it", model);
    pull_options o = {0};
    if (opt)
        o = *opt;
    else
        o.retries = -1;
    o.revision = revision;
    o.flags &= ~STORE_FORCE;
    rc = pull_model(s, repo, model, &o, NULL, err);
    if (rc == STORE_EEXIST) return 0; /* another worker published it while we waited */
    if (rc == 0 && pulled) *pulled = 1;
    return rc;
}
