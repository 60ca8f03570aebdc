/* test_deploy.c - runs check_deploy.py on deploy/ (unit file, Kubernetes YAML, GCE example),
 * then on a copy with a broken unit and a ScaledObject on the wrong list, which must fail:
 * the checks can tell a bad deployment from a good one. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "store/store_testutil.h"
#include "test.h"

/* Debian's python3 (python3-yaml) when it has PyYAML, else the first on PATH. */
static const char *python(void) {
    if (system("/usr/bin/python3 -c 'import yaml' 2>/dev/null") == 0) return "/usr/bin/python3";
    return "python3";
}

static int run_check(const char *source_dir) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s %s/tests/deploy/check_deploy.py %s %s/voxq 1>&2", python(),
             VOXQ_SOURCE_DIR, source_dir, VOXQ_BINARY_DIR);
    int status = system(cmd);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(deploy_files_pass) {
    ASSERT_EQ(run_check(VOXQ_SOURCE_DIR), 0);
}

/* A unit that stops before the drain ends and a ScaledObject watching another list. */
static void broken_body(const char *dir) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "cp -r %s/deploy %s/ && "
             "sed -i 's/^TimeoutStopSec=.*/TimeoutStopSec=20/' %s/deploy/voxq-worker.service && "
             "sed -i 's/listName: voxq:jobs$/listName: voxq:queue/' %s/deploy/k8s/keda.yaml",
             VOXQ_SOURCE_DIR, dir, dir, dir);
    ASSERT_EQ(system(cmd), 0);
    ASSERT_EQ(run_check(dir), 1);
}

TEST(broken_deploy_files_fail) {
    char dir[512];
    ASSERT_OK(tu_mkdtemp("deploy", dir, sizeof dir));
    broken_body(dir);
    tu_rmtree(dir);
}

int main(int argc, char **argv) {
    return test_main(argc, argv);
}
