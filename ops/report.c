/* report.c - report.html for `voxq bench --compare`: plain HTML and inline SVG, no script, no
 * external resource, so it opens anywhere (see bench.h, docs/bench.md). */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ops/bench.h"

/* A growing string; `failed` sticks after the first allocation failure. */
typedef struct sbuf {
    char *s;
    size_t len, cap;
    int failed;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    if (b->failed) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = 1;
            return;
        }
        if (b->s && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = (b->cap + (size_t)n + 1) * 2;
        char *ns = realloc(b->s, cap);
        if (!ns) {
            b->failed = 1;
            return;
        }
        b->s = ns;
        b->cap = cap;
    }
}

/* Appends text with &, <, >, " and ' escaped. */
static void sb_escape(sbuf *b, const char *text) {
    for (const char *p = text ? text : ""; *p; p++) {
        switch (*p) {
        case '&':
            sb_printf(b, "&amp;");
            break;
        case '<':
            sb_printf(b, "&lt;");
            break;
        case '>':
            sb_printf(b, "&gt;");
            break;
        case '"':
            sb_printf(b, "&quot;");
            break;
        case '\'':
            sb_printf(b, "&#39;");
            break;
        default:
            sb_printf(b, "%c", *p);
        }
    }
}

/* One figure of the report: where it lives in a variant's JSON and how to show it. */
typedef struct metric {
    const char *key; /* "load_s", "memory.kv_bytes", "quality.kl_mean" */
    const char *label;
    const char *unit; /* shown after values */
    double scale;     /* value shown = JSON value * scale */
    int higher_better;
    double reference; /* the original's value by definition (quality figures); NAN: none */
} metric;

static const metric metrics[] = {
    {"load_s", "Load time to ready", "s", 1, 0, NAN},
    {"memory.weights_bytes", "Weights (model + codec)", "MiB", 1.0 / 1048576, 0, NAN},
    {"memory.kv_bytes", "KV cache (self + cross)", "MiB", 1.0 / 1048576, 0, NAN},
    {"memory.workspace_bytes", "Activation workspace", "MiB", 1.0 / 1048576, 0, NAN},
    {"memory.baseline_bytes", "Memory after load (baseline)", "MiB", 1.0 / 1048576, 0, NAN},
    {"memory.peak_bytes", "Memory peak", "MiB", 1.0 / 1048576, 0, NAN},
    {"steps_per_s", "Decoder steps/s (one sequence)", "steps/s", 1, 1, NAN},
    {"rtf", "Realtime factor", "x", 1, 1, NAN},
    {"ttfa_s", "Time to first audio (median)", "s", 1, 0, NAN},
    {"quality.top1_agreement", "Teacher-forced top-1 agreement", "%", 100, 1, 1.0},
    {"quality.kl_mean", "KL divergence, mean per step and channel", "nats", 1, 0, 0.0},
    {"quality.eos_diff_mean_abs", "EOS position difference, mean |frames|", "frames", 1, 0, 0.0},
    {"quality.mel_distance_mean", "Log-mel distance, free running", "ln units", 1, 0, 0.0},
};
#define NMETRICS (sizeof metrics / sizeof metrics[0])

static const char *const colors[] = {"#4e79a7", "#f28e2b", "#59a14f", "#e15759",
                                     "#76b7b2", "#edc948", "#b07aa1", "#9c755f"};

/* The value of metric m for variant v (NAN when absent). */
static double metric_value(const cJSON *v, const metric *m) {
    const cJSON *node = v;
    char key[64];
    snprintf(key, sizeof key, "%s", m->key);
    char *save = NULL;
    for (char *part = strtok_r(key, ".", &save); part && node; part = strtok_r(NULL, ".", &save))
        node = cJSON_GetObjectItemCaseSensitive(node, part);
    if (cJSON_IsNumber(node)) return node->valuedouble * m->scale;
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(v, "name");
    int is_original = cJSON_IsString(name) && !strcmp(name->valuestring, "original");
    if (is_original && !isnan(m->reference) && !cJSON_HasObjectItem(v, "error"))
        return m->reference * m->scale;
    return NAN;
}

/* Short human number: 3 significant digits, no exponent for the usual ranges. */
static void fmt_value(char *out, size_t n, double x) {
    if (isnan(x)) {
        snprintf(out, n, "n/a");
    } else if (x != 0 && (fabs(x) < 1e-3 || fabs(x) >= 1e7)) {
        snprintf(out, n, "%.3g", x);
    } else if (fabs(x) >= 100) {
        snprintf(out, n, "%.0f", x);
    } else {
        snprintf(out, n, "%.3g", x);
    }
}

static const char *variant_name(const cJSON *v) {
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(v, "name");
    return cJSON_IsString(n) ? n->valuestring : "?";
}

/* One horizontal bar chart: a bar per variant, the value written beside it. */
static void bar_chart(sbuf *b, const cJSON *variants, const metric *m, int id) {
    int nv = cJSON_GetArraySize(variants);
    double mx = 0;
    for (int i = 0; i < nv; i++) {
        double x = metric_value(cJSON_GetArrayItem(variants, i), m);
        if (!isnan(x) && fabs(x) > mx) mx = fabs(x);
    }
    const int W = 640, label_w = 120, bar_h = 24, gap = 8, value_w = 90;
    int H = nv * (bar_h + gap) + gap;
    sb_printf(b, "<figure class=\"chart\" id=\"chart-%d\" data-metric=\"%s\">\n<figcaption>", id,
              m->key);
    sb_escape(b, m->label);
    sb_printf(b, " (%s, %s is better)</figcaption>\n", m->unit,
              m->higher_better ? "higher" : "lower");
    sb_printf(b,
              "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
              "viewBox=\"0 0 %d %d\" role=\"img\" aria-label=\"",
              W, H, W, H);
    sb_escape(b, m->label);
    sb_printf(b, "\">\n");
    for (int i = 0; i < nv; i++) {
        const cJSON *v = cJSON_GetArrayItem(variants, i);
        double x = metric_value(v, m);
        int y = gap + i * (bar_h + gap);
        int len = (!isnan(x) && mx > 0) ? (int)lround(fabs(x) / mx * (W - label_w - value_w)) : 0;
        char val[32];
        fmt_value(val, sizeof val, x);
        sb_printf(b, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\" class=\"lbl\">", label_w - 8,
                  y + bar_h - 7);
        sb_escape(b, variant_name(v));
        sb_printf(b,
                  "</text><rect class=\"bar\" x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" "
                  "fill=\"%s\"/><text x=\"%d\" y=\"%d\" class=\"val\">%s</text>\n",
                  label_w, y, len, bar_h, colors[i % 8], label_w + len + 6, y + bar_h - 7, val);
    }
    sb_printf(b, "</svg>\n</figure>\n");
}

/* Steps/s against concurrent sequences: a polyline per variant over the measured counts. */
static void concurrency_chart(sbuf *b, const cJSON *variants) {
    int nv = cJSON_GetArraySize(variants);
    double xmax = 1, ymax = 0;
    int points = 0;
    for (int i = 0; i < nv; i++) {
        const cJSON *c = cJSON_GetObjectItem(cJSON_GetArrayItem(variants, i), "concurrency");
        const cJSON *e;
        cJSON_ArrayForEach(e, c) {
            double x = cJSON_GetNumberValue(cJSON_GetObjectItem(e, "sequences"));
            double y = cJSON_GetNumberValue(cJSON_GetObjectItem(e, "steps_per_s"));
            if (isnan(x) || isnan(y)) continue;
            if (x > xmax) xmax = x;
            if (y > ymax) ymax = y;
            points++;
        }
    }
    sb_printf(b, "<section id=\"concurrency\">\n<h2>Steps/s against concurrent sequences</h2>\n");
    if (points == 0) {
        sb_printf(b, "<p>Not measured (pass <code>--concurrency 1,2,4</code>).</p>\n</section>\n");
        return;
    }
    if (ymax <= 0) ymax = 1;
    const int W = 640, H = 320, L = 70, R = 20, T = 20, B = 50;
    sb_printf(b,
              "<figure class=\"chart\" id=\"chart-concurrency\" data-metric=\"concurrency\">"
              "\n<figcaption>Aggregate decoder steps/s (sequence-steps per second) by number of "
              "sequences stepping together</figcaption>\n"
              "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
              "viewBox=\"0 0 %d %d\" role=\"img\" aria-label=\"steps per second against "
              "concurrent sequences\">\n",
              W, H, W, H);
    sb_printf(b,
              "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" class=\"axis\"/>"
              "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" class=\"axis\"/>\n",
              L, H - B, W - R, H - B, L, T, L, H - B);
    for (int k = 0; k <= 4; k++) {
        double yv = ymax * k / 4;
        int y = (int)lround(H - B - (double)(H - B - T) * k / 4);
        char val[32];
        fmt_value(val, sizeof val, yv);
        sb_printf(b, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\" class=\"tick\">%s</text>\n",
                  L - 6, y + 4, val);
    }
    for (int k = 1; k <= (int)xmax; k *= 2) {
        int x = (int)lround(L + (double)(W - L - R) * (k - 1) / (xmax > 1 ? xmax - 1 : 1));
        sb_printf(b, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" class=\"tick\">%d</text>\n", x,
                  H - B + 18, k);
    }
    sb_printf(b,
              "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" class=\"tick\">sequences"
              "</text>\n",
              (L + W - R) / 2, H - 10);
    for (int i = 0; i < nv; i++) {
        const cJSON *v = cJSON_GetArrayItem(variants, i);
        const cJSON *c = cJSON_GetObjectItem(v, "concurrency"), *e;
        if (!cJSON_GetArraySize(c)) continue;
        sb_printf(b, "<polyline class=\"line\" fill=\"none\" stroke=\"%s\" points=\"",
                  colors[i % 8]);
        cJSON_ArrayForEach(e, c) {
            double x = cJSON_GetNumberValue(cJSON_GetObjectItem(e, "sequences"));
            double y = cJSON_GetNumberValue(cJSON_GetObjectItem(e, "steps_per_s"));
            sb_printf(b, "%.1f,%.1f ", L + (W - L - R) * (x - 1) / (xmax > 1 ? xmax - 1 : 1),
                      H - B - (H - B - T) * y / ymax);
        }
        sb_printf(b, "\"/>\n<text x=\"%d\" y=\"%d\" fill=\"%s\" class=\"lbl\">", W - R - 100,
                  T + 14 + 16 * i, colors[i % 8]);
        sb_escape(b, variant_name(v));
        sb_printf(b, "</text>\n");
    }
    sb_printf(b, "</svg>\n</figure>\n</section>\n");
}

/* Every metric for every variant, with the ratio to the original. */
static void ratio_table(sbuf *b, const cJSON *variants) {
    int nv = cJSON_GetArraySize(variants);
    const cJSON *orig = NULL;
    for (int i = 0; i < nv; i++)
        if (!strcmp(variant_name(cJSON_GetArrayItem(variants, i)), "original"))
            orig = cJSON_GetArrayItem(variants, i);
    sb_printf(b, "<section id=\"table\">\n<h2>All figures, with ratios against the original"
                 "</h2>\n<table>\n<thead><tr><th>metric</th>");
    for (int i = 0; i < nv; i++) {
        sb_printf(b, "<th>");
        sb_escape(b, variant_name(cJSON_GetArrayItem(variants, i)));
        sb_printf(b, "</th>");
    }
    sb_printf(b, "</tr></thead>\n<tbody>\n");
    for (size_t k = 0; k < NMETRICS; k++) {
        const metric *m = &metrics[k];
        double ref = orig ? metric_value(orig, m) : NAN;
        sb_printf(b, "<tr><td>");
        sb_escape(b, m->label);
        sb_printf(b, " (%s)</td>", m->unit);
        for (int i = 0; i < nv; i++) {
            double x = metric_value(cJSON_GetArrayItem(variants, i), m);
            char val[32];
            fmt_value(val, sizeof val, x);
            sb_printf(b, "<td>%s", val);
            if (!isnan(x) && !isnan(ref) && ref != 0)
                sb_printf(b, " <span class=\"ratio\">(%.2f&times;)</span>", x / ref);
            sb_printf(b, "</td>");
        }
        sb_printf(b, "</tr>\n");
    }
    sb_printf(b, "</tbody>\n</table>\n</section>\n");
}

/* Per-prompt quality figures of each variant that has them. */
static void quality_tables(sbuf *b, const cJSON *variants) {
    sb_printf(b, "<section id=\"quality\">\n<h2>Quality against the original, per prompt</h2>\n");
    int any = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, variants) {
        const cJSON *q = cJSON_GetObjectItem(v, "quality");
        if (!cJSON_IsObject(q)) continue;
        any = 1;
        sb_printf(b, "<h3>");
        sb_escape(b, variant_name(v));
        sb_printf(b, "</h3>\n<table>\n<thead><tr><th>prompt</th><th>teacher-forced steps</th>"
                     "<th>top-1 agreement</th><th>KL mean</th><th>KL max</th><th>EOS original"
                     "</th><th>EOS variant</th><th>log-mel distance</th></tr></thead>\n<tbody>\n");
        const cJSON *p;
        cJSON_ArrayForEach(p, cJSON_GetObjectItem(q, "prompts")) {
            char a[32], kl[32], klm[32], mel[32];
            fmt_value(a, sizeof a,
                      100 * cJSON_GetNumberValue(cJSON_GetObjectItem(p, "top1_agreement")));
            fmt_value(kl, sizeof kl, cJSON_GetNumberValue(cJSON_GetObjectItem(p, "kl_mean")));
            fmt_value(klm, sizeof klm, cJSON_GetNumberValue(cJSON_GetObjectItem(p, "kl_max")));
            const cJSON *md = cJSON_GetObjectItem(p, "mel_distance");
            fmt_value(mel, sizeof mel, cJSON_IsNumber(md) ? md->valuedouble : NAN);
            sb_printf(b, "<tr><td>");
            sb_escape(b, cJSON_GetStringValue(cJSON_GetObjectItem(p, "name")));
            sb_printf(b,
                      "</td><td>%.0f</td><td>%s %%</td><td>%s</td><td>%s</td><td>%.0f%s</td>"
                      "<td>%.0f%s</td><td>%s</td></tr>\n",
                      cJSON_GetNumberValue(cJSON_GetObjectItem(p, "tf_steps")), a, kl, klm,
                      cJSON_GetNumberValue(cJSON_GetObjectItem(p, "eos_orig")),
                      cJSON_IsTrue(cJSON_GetObjectItem(p, "chose_eos_orig")) ? "" : " (forced)",
                      cJSON_GetNumberValue(cJSON_GetObjectItem(p, "eos_variant")),
                      cJSON_IsTrue(cJSON_GetObjectItem(p, "chose_eos_variant")) ? "" : " (forced)",
                      mel);
        }
        sb_printf(b, "</tbody>\n</table>\n");
    }
    if (!any) sb_printf(b, "<p>No quality figures in these results.</p>\n");
    sb_printf(b, "</section>\n");
}

/* A player per generated file: prompts down, variants across. */
static void audio_table(sbuf *b, const cJSON *results, const cJSON *variants) {
    sb_printf(b, "<section id=\"audio\">\n<h2>Audio (same prompt and seed in every variant)"
                 "</h2>\n<table>\n<thead><tr><th>prompt</th>");
    const cJSON *v, *p;
    cJSON_ArrayForEach(v, variants) {
        sb_printf(b, "<th>");
        sb_escape(b, variant_name(v));
        sb_printf(b, "</th>");
    }
    sb_printf(b, "</tr></thead>\n<tbody>\n");
    cJSON_ArrayForEach(p, cJSON_GetObjectItem(results, "prompts")) {
        const char *pname = cJSON_GetStringValue(cJSON_GetObjectItem(p, "name"));
        sb_printf(b, "<tr><td title=\"");
        sb_escape(b, cJSON_GetStringValue(cJSON_GetObjectItem(p, "text")));
        sb_printf(b, "\">");
        sb_escape(b, pname);
        sb_printf(b, "</td>");
        cJSON_ArrayForEach(v, variants) {
            const cJSON *a, *file = NULL;
            cJSON_ArrayForEach(a, cJSON_GetObjectItem(v, "audio")) {
                const char *ap = cJSON_GetStringValue(cJSON_GetObjectItem(a, "prompt"));
                if (ap && pname && !strcmp(ap, pname)) file = cJSON_GetObjectItem(a, "file");
            }
            if (cJSON_IsString(file)) {
                sb_printf(b, "<td><audio controls preload=\"none\" src=\"");
                sb_escape(b, file->valuestring);
                sb_printf(b, "\"></audio><br><a href=\"");
                sb_escape(b, file->valuestring);
                sb_printf(b, "\">");
                sb_escape(b, file->valuestring);
                sb_printf(b, "</a></td>");
            } else {
                sb_printf(b, "<td>n/a</td>");
            }
        }
        sb_printf(b, "</tr>\n");
    }
    sb_printf(b, "</tbody>\n</table>\n</section>\n");
}

static const char *style =
    "body{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
    "text-align:right}td:first-child,th:first-child{text-align:left}"
    ".ratio{color:#666;font-size:90%}figure.chart{display:inline-block;margin:0.5em 1em 1em 0}"
    "figcaption{font-weight:bold;margin-bottom:4px}svg text{font-size:12px;font-family:sans-serif}"
    ".axis{stroke:#444}.line{stroke-width:2}.error{color:#b00}";

int bench_report_html(const cJSON *results, const char *path, eng_error *err) {
    sbuf b = {0};
    const cJSON *variants = cJSON_GetObjectItem(results, "variants");
    const char *model = cJSON_GetStringValue(cJSON_GetObjectItem(results, "model"));
    sb_printf(&b, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                  "<title>voxq bench: ");
    sb_escape(&b, model);
    sb_printf(&b, "</title>\n<style>%s</style>\n</head>\n<body>\n<h1>voxq bench: ", style);
    sb_escape(&b, model);
    sb_printf(&b, "</h1>\n<section id=\"summary\">\n<h2>Summary</h2>\n<ul>\n");
    static const char *const head[] = {"created", "host", "device", "codec", "version"};
    for (size_t i = 0; i < sizeof head / sizeof head[0]; i++) {
        sb_printf(&b, "<li>%s: ", head[i]);
        sb_escape(&b, cJSON_GetStringValue(cJSON_GetObjectItem(results, head[i])));
        sb_printf(&b, "</li>\n");
    }
    const cJSON *s = cJSON_GetObjectItem(results, "settings");
    sb_printf(&b,
              "<li>runs per prompt: %.0f, decoder steps at most: %.0f, seed: %.0f "
              "(prompt i uses seed + i)</li>\n",
              cJSON_GetNumberValue(cJSON_GetObjectItem(s, "runs")),
              cJSON_GetNumberValue(cJSON_GetObjectItem(s, "steps")),
              cJSON_GetNumberValue(cJSON_GetObjectItem(s, "seed")));
    sb_printf(&b, "<li>variants:");
    const cJSON *v;
    cJSON_ArrayForEach(v, variants) {
        sb_printf(&b, " ");
        sb_escape(&b, variant_name(v));
        const cJSON *be = cJSON_GetObjectItem(v, "backend");
        if (cJSON_IsString(be)) {
            sb_printf(&b, " (");
            sb_escape(&b, be->valuestring);
            sb_printf(&b, ")");
        }
    }
    sb_printf(&b, "</li>\n</ul>\n");
    int failures = 0;
    cJSON_ArrayForEach(v, variants) {
        const cJSON *e = cJSON_GetObjectItem(v, "error");
        if (!cJSON_IsString(e)) continue;
        failures++;
        sb_printf(&b, "<p class=\"error\">");
        sb_escape(&b, variant_name(v));
        sb_printf(&b, " was not measured: ");
        sb_escape(&b, e->valuestring);
        sb_printf(&b, "</p>\n");
    }
    sb_printf(&b, "<h3>Prompts</h3>\n<table>\n<thead><tr><th>name</th><th>text</th></tr>"
                  "</thead>\n<tbody>\n");
    const cJSON *p;
    cJSON_ArrayForEach(p, cJSON_GetObjectItem(results, "prompts")) {
        sb_printf(&b, "<tr><td>");
        sb_escape(&b, cJSON_GetStringValue(cJSON_GetObjectItem(p, "name")));
        sb_printf(&b, "</td><td style=\"text-align:left\">");
        sb_escape(&b, cJSON_GetStringValue(cJSON_GetObjectItem(p, "text")));
        sb_printf(&b, "</td></tr>\n");
    }
    sb_printf(&b, "</tbody>\n</table>\n</section>\n<section id=\"charts\">\n<h2>Per metric</h2>"
                  "\n");
    for (size_t k = 0; k < NMETRICS; k++)
        bar_chart(&b, variants, &metrics[k], (int)k);
    sb_printf(&b, "</section>\n");
    concurrency_chart(&b, variants);
    ratio_table(&b, variants);
    quality_tables(&b, variants);
    audio_table(&b, results, variants);
    sb_printf(&b,
              "<p>Figures are measurements of one machine at one time, never pass/fail; "
              "see docs/bench.md for how each is taken.%s</p>\n</body>\n</html>\n",
              failures ? " Some variants failed; their bars read n/a." : "");
    if (b.failed) {
        free(b.s);
        return eng_errorf(err, ENG_ENOMEM, "%s: out of memory", path);
    }
    char tmp[4200];
    FILE *f = NULL;
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) < (int)sizeof tmp)
        f = fopen(tmp, "wb");
    int ok = f && fwrite(b.s, 1, b.len, f) == b.len;
    if (f && fclose(f) != 0) ok = 0;
    free(b.s);
    if (!ok || rename(tmp, path) != 0) {
        int e = errno;
        remove(tmp);
        return eng_errorf(err, ENG_EIO, "%s: %s", path, strerror(e));
    }
    return 0;
}
