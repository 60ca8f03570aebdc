/* test_store_cli.c - `voxq store` as an operator runs it: the real binary, a real tiny Dia
 * checkpoint, exit codes (0 success, 1 failure, 2 bad usage or input) and what it prints. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/tiny_ckpt.h"
#include "store_testutil.h"
#include "test.h"

static char tmp[256];                   /* per-run scratch directory */
static const char *store_dir = "store"; /* VOXQ_STORE, relative to tmp; one per test case */
static char out_text[1 << 16], err_text[1 << 16];

/* Runs `voxq ARGS` with VOXQ_STORE=<tmp>/<store_dir> (stdin closed, stdout and stderr captured, so
 * not a terminal) and returns its exit code, or -1 if it did not exit normally. */
static int voxq(const char *args) {
    const char *bindir = getenv("VOXQ_BINARY_DIR");
    if (!bindir) bindir = VOXQ_BINARY_DIR;
    char cmd[2048], out_path[300], err_path[300];
    snprintf(out_path, sizeof out_path, "%s/out.txt", tmp);
    snprintf(err_path, sizeof err_path, "%s/err.txt", tmp);
    snprintf(cmd, sizeof cmd, "cd '%s' && VOXQ_STORE='%s/%s' '%s/voxq' %s </dev/null >'%s' 2>'%s'",
             tmp, tmp, store_dir, bindir, args, out_path, err_path);
    int status = system(cmd);
    char *o = tu_read(out_path, NULL), *e = tu_read(err_path, NULL);
    snprintf(out_text, sizeof out_text, "%s", o ? o : "");
    snprintf(err_text, sizeof err_text, "%s", e ? e : "");
    free(o);
    free(e);
    if (status == -1 || !WIFEXITED(status)) return -1;
    int code = WEXITSTATUS(status);
    if (code != 0) fprintf(stderr, "  voxq %s -> %d: %s%s", args, code, out_text, err_text);
    return code;
}

static void make_download(const char *name, uint64_t seed) {
    char dir[300];
    snprintf(dir, sizeof dir, "%s/%s", tmp, name);
    if (tiny_dia_write(dir, seed, ENG_DT_F32) != 0) fprintf(stderr, "tiny_dia_write failed\n");
}

TEST(import_ls_verify_rm) {
    store_dir = "store-a";
    make_download("dl", 3);
    ASSERT_EQ(voxq("store import dl --model dia-tiny"), 0);
    ASSERT_CONTAINS(out_text, "dia-tiny/original: imported 2 files");
    /* Not a terminal: plain progress lines, one per file at least. */
    ASSERT_CONTAINS(err_text, "copying model.safetensors: 100%");
    ASSERT_CONTAINS(err_text, "copying config.json: 100%");
    ASSERT_TRUE(strchr(err_text, '\r') == NULL);

    ASSERT_EQ(voxq("store ls"), 0);
    ASSERT_CONTAINS(out_text, "MODEL");
    ASSERT_CONTAINS(out_text, "VERIFIED");
    ASSERT_CONTAINS(out_text, "dia-tiny");
    ASSERT_CONTAINS(out_text, "original");
    ASSERT_CONTAINS(out_text, "import");
    ASSERT_CONTAINS(out_text, "yes (sizes)");
    ASSERT_EQ(voxq("store ls --hash dia-tiny"), 0);
    ASSERT_CONTAINS(out_text, "yes (sha256)");

    ASSERT_EQ(voxq("store verify dia-tiny/original"), 0);
    ASSERT_CONTAINS(out_text, "dia-tiny/original: OK (2 files");

    /* Already there: said so, success, nothing redone; --force redoes it. */
    ASSERT_EQ(voxq("store import dl --model dia-tiny"), 0);
    ASSERT_CONTAINS(out_text, "already published");
    ASSERT_EQ(voxq("store import dl --model dia-tiny --force"), 0);
    ASSERT_CONTAINS(out_text, "imported");

    ASSERT_EQ(voxq("store rm dia-tiny/original"), 0);
    ASSERT_CONTAINS(out_text, "removed dia-tiny/original");
    ASSERT_EQ(voxq("store verify dia-tiny/original"), 1);
    ASSERT_CONTAINS(err_text, "no such variant");
    ASSERT_EQ(voxq("store rm dia-tiny/original"), 1);
    ASSERT_EQ(voxq("store ls"), 0);
    ASSERT_TRUE(strstr(out_text, "dia-tiny") == NULL);
}

/* `verify` catches one flipped byte and names the file; the size-only check does not see it. */
TEST(verify_names_flipped_byte) {
    store_dir = "store-b";
    make_download("dl2", 4);
    ASSERT_EQ(voxq("store import dl2 --model dia-flip"), 0);
    char path[400];
    snprintf(path, sizeof path, "%s/store-b/models/dia-flip/original/model.safetensors", tmp);
    long long size = tu_file_size(path);
    ASSERT_TRUE(size > 1000);
    ASSERT_OK(tu_flip_byte(path, (uint64_t)size - 5, 0x01));
    ASSERT_EQ(voxq("store verify dia-flip/original"), 1);
    ASSERT_CONTAINS(out_text, "DAMAGED (1 problem)");
    ASSERT_CONTAINS(out_text, "model.safetensors: sha256");
    ASSERT_EQ(voxq("store verify dia-flip/original --no-hash"), 0);
    ASSERT_EQ(voxq("store ls --hash dia-flip"), 1);
    ASSERT_CONTAINS(out_text, "NO: model.safetensors: sha256");
    /* A damaged variant blocks a plain import and is replaced by a forced one. */
    ASSERT_OK(truncate(path, 100));
    ASSERT_EQ(voxq("store ls dia-flip"), 1);
    ASSERT_CONTAINS(out_text, "NO: model.safetensors: size 100");
    ASSERT_EQ(voxq("store import dl2 --model dia-flip"), 1);
    ASSERT_CONTAINS(err_text, "--force");
    ASSERT_EQ(voxq("store import dl2 --model dia-flip --force"), 0);
    ASSERT_EQ(voxq("store verify dia-flip/original"), 0);
}

TEST(bad_usage_and_escaping_names_exit_2) {
    store_dir = "store-c";
    ASSERT_EQ(voxq("store"), 2);
    ASSERT_EQ(voxq("store bogus"), 2);
    ASSERT_EQ(voxq("store verify"), 2);
    ASSERT_EQ(voxq("store import dl"), 2);         /* no --model */
    ASSERT_EQ(voxq("store import dl --model"), 2); /* --model without value */
    ASSERT_EQ(voxq("store ls --frobnicate"), 2);
    ASSERT_EQ(voxq("store verify ../x/original"), 2);
    ASSERT_CONTAINS(err_text, "is not MODEL/VARIANT");
    ASSERT_EQ(voxq("store verify ../original"), 2);
    ASSERT_CONTAINS(err_text, "invalid model name '..'");
    ASSERT_EQ(voxq("store verify m/../../etc"), 2);
    ASSERT_EQ(voxq("store rm m/a/b"), 2);
    ASSERT_EQ(voxq("store import . --model ../evil"), 2);
    ASSERT_CONTAINS(err_text, "invalid model name '../evil'");
    ASSERT_EQ(voxq("store ls ../etc"), 2);
    ASSERT_EQ(voxq("store import /nonexistent/download --model x"), 2);
    char evil[300];
    snprintf(evil, sizeof evil, "%s/evil", tmp);
    ASSERT_TRUE(!tu_exists(evil));
    ASSERT_EQ(voxq("help store"), 0);
    ASSERT_CONTAINS(out_text, "voxq store import DIR --model NAME");
}

/* --store wins over VOXQ_STORE. */
TEST(store_flag_overrides_env) {
    store_dir = "store-d";
    make_download("dl3", 5);
    ASSERT_EQ(voxq("store import dl3 --model dia-flag --store other-store"), 0);
    char path[400];
    snprintf(path, sizeof path, "%s/other-store/models/dia-flag/original/MANIFEST.json", tmp);
    ASSERT_TRUE(tu_exists(path));
    ASSERT_EQ(voxq("store ls"), 0);
    ASSERT_TRUE(strstr(out_text, "dia-flag") == NULL);
    ASSERT_EQ(voxq("store ls --store other-store"), 0);
    ASSERT_CONTAINS(out_text, "dia-flag");
}

int main(int argc, char **argv) {
    if (tu_mkdtemp("cli", tmp, sizeof tmp)) {
        fprintf(stderr, "cannot make a temp dir\n");
        return 1;
    }
    int rc = test_main(argc, argv);
    tu_rmtree(tmp);
    return rc;
}
