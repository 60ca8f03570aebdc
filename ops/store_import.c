/* store_import.c - `voxq store import`: copies a Hugging Face-format download into
 * models/<model>/original/ through the normal staging path, so an import is as atomic and
 * verifiable as any other publish. */
#include "ops/store.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ops/store_internal.h"

#define INDEX_NAME "model.safetensors.index.json"
/* The format's own bound on a safetensors JSON header. */
#define HEADER_MAX_BYTES (100u << 20)
#define JSON_MAX_BYTES (64u << 20)

/* The files one import copies, in copy order. */
typedef struct import_set {
    char **names;
    size_t n;
} import_set;

static void set_free(import_set *set) {
    for (size_t i = 0; i < set->n; i++)
        free(set->names[i]);
    free(set->names);
    set->names = NULL;
    set->n = 0;
}

static int set_add(import_set *set, const char *name, eng_error *err) {
    for (size_t i = 0; i < set->n; i++)
        if (!strcmp(set->names[i], name)) return 0;
    char **grown = realloc(set->names, (set->n + 1) * sizeof *grown);
    if (!grown) return eng_errorf(err, ENG_ENOMEM, "import: no memory");
    set->names = grown;
    if (!(set->names[set->n] = strdup(name))) return eng_errorf(err, ENG_ENOMEM, "no memory");
    set->n++;
    return 0;
}

/* Reads a JSON file of the download into a parsed document. */
static int read_json(const char *path, cJSON **out, eng_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return eng_errorf(err, errno == ENOENT ? ENG_ENOTFOUND : ENG_EIO, "%s: %s", path,
                          strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size > JSON_MAX_BYTES) {
        fclose(f);
        return eng_errorf(err, ENG_EFORMAT, "%s: not a regular file under %u bytes", path,
                          JSON_MAX_BYTES);
    }
    char *text = malloc((size_t)sb.st_size + 1);
    size_t got = text ? fread(text, 1, (size_t)sb.st_size, f) : 0;
    fclose(f);
    if (!text) return eng_errorf(err, ENG_ENOMEM, "%s: no memory", path);
    text[got] = '\0';
    *out = cJSON_ParseWithLength(text, got);
    free(text);
    if (!*out || !cJSON_IsObject(*out)) {
        cJSON_Delete(*out);
        *out = NULL;
        return eng_errorf(err, ENG_EFORMAT, "%s: not a JSON object", path);
    }
    return 0;
}

/* Checks that a .safetensors file is complete and its header well formed: header length inside
 * the file, a JSON object whose tensors have [begin, end] offsets with the largest end exactly at
 * the end of the file. A truncated or corrupted download fails here, before it is published; the
 * loader's full validation (dtypes, shapes) still runs when the model is loaded. */
static int check_safetensors(const char *path, const char *name, eng_error *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return eng_errorf(err, ENG_EIO, "%s: open: %s", path, strerror(errno));
    struct stat sb;
    uint8_t len_bytes[8];
    int rc = 0;
    char *header = NULL;
    cJSON *doc = NULL;
    if (fstat(fd, &sb) != 0 || pread(fd, len_bytes, 8, 0) != 8) {
        rc = eng_errorf(err, ENG_EFORMAT, "%s: shorter than a safetensors header", name);
        goto done;
    }
    uint64_t header_len = 0, file_size = (uint64_t)sb.st_size;
    for (int i = 7; i >= 0; i--)
        header_len = header_len << 8 | len_bytes[i];
    if (header_len > HEADER_MAX_BYTES || 8 + header_len > file_size) {
        rc = eng_errorf(err, ENG_EFORMAT, "%s: header length %llu does not fit the file (%llu B)",
                        name, (unsigned long long)header_len, (unsigned long long)file_size);
        goto done;
    }
    if (!(header = malloc(header_len + 1))) {
        rc = eng_errorf(err, ENG_ENOMEM, "%s: no memory for the header", name);
        goto done;
    }
    if (pread(fd, header, header_len, 8) != (ssize_t)header_len) {
        rc = eng_errorf(err, ENG_EIO, "%s: reading the header: %s", name, strerror(errno));
        goto done;
    }
    header[header_len] = '\0';
    doc = cJSON_ParseWithLength(header, header_len);
    if (!cJSON_IsObject(doc)) {
        rc = eng_errorf(err, ENG_EFORMAT, "%s: header is not a JSON object", name);
        goto done;
    }
    uint64_t data_len = file_size - 8 - header_len, max_end = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, doc) {
        if (!strcmp(t->string, "__metadata__")) continue;
        const cJSON *off = cJSON_GetObjectItemCaseSensitive(t, "data_offsets");
        const cJSON *b = cJSON_GetArrayItem(off, 0), *e = cJSON_GetArrayItem(off, 1);
        if (cJSON_GetArraySize(off) != 2 || !cJSON_IsNumber(b) || !cJSON_IsNumber(e) ||
            b->valuedouble < 0 || e->valuedouble < b->valuedouble ||
            e->valuedouble > (double)data_len) {
            rc = eng_errorf(err, ENG_EFORMAT,
                            "%s: tensor '%.100s' has data_offsets outside the %llu data bytes",
                            name, t->string, (unsigned long long)data_len);
            goto done;
        }
        if ((uint64_t)e->valuedouble > max_end) max_end = (uint64_t)e->valuedouble;
    }
    if (max_end != data_len)
        rc = eng_errorf(err, ENG_EFORMAT, "%s: tensors end at byte %llu of %llu data bytes", name,
                        (unsigned long long)max_end, (unsigned long long)data_len);
done:
    cJSON_Delete(doc);
    free(header);
    close(fd);
    return rc;
}

/* Decides what to copy: config.json, the weights (single file or index + shards), and
 * generation_config.json when present. Shard names come from the index and are validated as
 * store file names, so an index cannot point outside the download. */
static int plan_import(const char *dir, import_set *set, eng_error *err) {
    char path[STORE_PATH_MAX];
    struct stat sb;
    cJSON *doc = NULL;
    int rc = store_fs_pathf(path, sizeof path, err, "%s/config.json", dir);
    if (!rc) rc = read_json(path, &doc, err);
    cJSON_Delete(doc);
    doc = NULL;
    if (rc) return rc;
    if ((rc = set_add(set, "config.json", err))) return rc;
    if ((rc = store_fs_pathf(path, sizeof path, err, "%s/%s", dir, INDEX_NAME))) return rc;
    if (stat(path, &sb) == 0) {
        if ((rc = read_json(path, &doc, err))) return rc;
        const cJSON *map = cJSON_GetObjectItemCaseSensitive(doc, "weight_map");
        if (!cJSON_IsObject(map) || !map->child)
            rc = eng_errorf(err, ENG_EFORMAT, "%s: 'weight_map' is missing or empty", path);
        if (!rc) rc = set_add(set, INDEX_NAME, err);
        const cJSON *entry;
        cJSON_ArrayForEach(entry, map) {
            if (rc) break;
            if (!cJSON_IsString(entry) || !store_file_name_valid(entry->valuestring))
                rc = eng_errorf(err, ENG_EFORMAT, "%s: tensor '%.100s' names an invalid shard",
                                path, entry->string);
            else
                rc = set_add(set, entry->valuestring, err);
        }
        cJSON_Delete(doc);
        if (rc) return rc;
    } else if ((rc = set_add(set, "model.safetensors", err))) {
        return rc;
    }
    if ((rc = store_fs_pathf(path, sizeof path, err, "%s/generation_config.json", dir))) return rc;
    if (stat(path, &sb) == 0) {
        if ((rc = read_json(path, &doc, err))) return rc;
        cJSON_Delete(doc);
        if ((rc = set_add(set, "generation_config.json", err))) return rc;
    }
    for (size_t i = 0; i < set->n; i++) {
        if ((rc = store_fs_pathf(path, sizeof path, err, "%s/%s", dir, set->names[i]))) return rc;
        if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
            return eng_errorf(err, ENG_ENOTFOUND, "%s: missing (needed by the import)", path);
        size_t len = strlen(set->names[i]);
        if (len > 12 && !strcmp(set->names[i] + len - 12, ".safetensors") &&
            (rc = check_safetensors(path, set->names[i], err)))
            return rc;
    }
    return 0;
}

int store_import(const store *s, const char *dir, const char *model, int flags,
                 store_progress_fn progress, void *ud, eng_error *err) {
    char target[STORE_PATH_MAX], source[PATH_MAX];
    int rc = store_variant_dir(s, model, "original", target, sizeof target, err);
    if (rc) return rc;
    if (!realpath(dir, source))
        return eng_errorf(err, ENG_ENOTFOUND, "%s: %s", dir, strerror(errno));
    import_set set = {0};
    if ((rc = plan_import(source, &set, err))) {
        set_free(&set);
        return rc;
    }
    store_stage stage;
    if ((rc = store_stage_begin(s, model, "original", flags, &stage, err))) {
        set_free(&set);
        return rc;
    }
    for (size_t i = 0; i < set.n && !rc; i++) {
        char path[STORE_PATH_MAX];
        rc = store_fs_pathf(path, sizeof path, err, "%s/%s", source, set.names[i]);
        if (!rc) rc = store_stage_copy_in(&stage, path, set.names[i], progress, ud, err);
    }
    cJSON *extra = NULL;
    if (!rc) {
        extra = cJSON_CreateObject();
        cJSON *src = extra ? cJSON_AddObjectToObject(extra, "source") : NULL;
        if (!src || !cJSON_AddStringToObject(src, "path", source) ||
            !cJSON_AddStringToObject(extra, "method", "import") ||
            !cJSON_AddObjectToObject(extra, "params"))
            rc = eng_errorf(err, ENG_ENOMEM, "import: no memory");
    }
    if (!rc)
        rc = store_stage_commit(&stage, extra, NULL, NULL, err);
    else
        store_stage_abort(&stage);
    cJSON_Delete(extra);
    set_free(&set);
    return rc;
}
