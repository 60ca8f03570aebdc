/* quality_mel.c - the audio half of the quality figures: a radix-2 FFT, a log-mel
 * spectrogram and the distance between two waveforms' spectrograms (see quality.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/quality.h"

#define TWO_PI 6.283185307179586476925286766559

int quality_fft(double *re, double *im, int n, eng_error *err) {
    if (n < 1 || (n & (n - 1)) != 0)
        return eng_errorf(err, ENG_EINVAL, "quality: FFT size %d is not a power of two", n);
    /* bit-reversal permutation, then log2(n) butterfly passes (decimation in time) */
    for (int i = 1, j = 0; i < n; i++) {
        int bit = n >> 1;
        for (; j & bit; bit >>= 1)
            j ^= bit;
        j ^= bit;
        if (i < j) {
            double t = re[i];
            re[i] = re[j];
            re[j] = t;
            t = im[i];
            im[i] = im[j];
            im[j] = t;
        }
    }
    for (int len = 2; len <= n; len <<= 1) {
        double ang = -TWO_PI / len;
        int half = len / 2;
        for (int k = 0; k < half; k++) {
            /* twiddles from cos/sin directly: no drift from repeated multiplication */
            double wr = cos(ang * k), wi = sin(ang * k);
            for (int i = k; i < n; i += len) {
                int j = i + half;
                double tr = re[j] * wr - im[j] * wi;
                double ti = re[j] * wi + im[j] * wr;
                re[j] = re[i] - tr;
                im[j] = im[i] - ti;
                re[i] += tr;
                im[i] += ti;
            }
        }
    }
    return 0;
}

/* Fills in defaults and validates; the message names the bad field. */
static int mel_settings(const quality_mel_opts *in, int sample_rate, quality_mel_opts *o,
                        eng_error *err) {
    quality_mel_opts d = {2048, 512, 80, 1e-5f};
    if (in) {
        if (in->n_fft) d.n_fft = in->n_fft;
        if (in->hop) d.hop = in->hop;
        if (in->n_mels) d.n_mels = in->n_mels;
        if (in->floor > 0) d.floor = in->floor;
    }
    if (d.n_fft < 2 || (d.n_fft & (d.n_fft - 1)) != 0 || d.n_fft > (1 << 20))
        return eng_errorf(err, ENG_EINVAL,
                          "quality: mel n_fft %d is not a power of two in "
                          "[2, 2^20]",
                          d.n_fft);
    if (d.hop < 1 || d.n_mels < 1 || d.n_mels > 1024)
        return eng_errorf(err, ENG_EINVAL, "quality: mel hop %d / n_mels %d out of range", d.hop,
                          d.n_mels);
    if (sample_rate < 1) return eng_errorf(err, ENG_EINVAL, "quality: sample rate %d", sample_rate);
    *o = d;
    return 0;
}

static double hz_to_mel(double hz) {
    return 2595.0 * log10(1.0 + hz / 700.0);
}
static double mel_to_hz(double mel) {
    return 700.0 * (pow(10.0, mel / 2595.0) - 1.0);
}

/* Triangular filters [n_mels][bins], bins = n_fft / 2 + 1, edges equally spaced on the HTK mel
 * scale from 0 Hz to sr / 2; each weight is the triangle's height at the bin's frequency. */
static float *mel_filters(int n_mels, int n_fft, int sample_rate) {
    int bins = n_fft / 2 + 1;
    float *fb = calloc((size_t)n_mels * (size_t)bins, sizeof *fb);
    double *edge = malloc((size_t)(n_mels + 2) * sizeof *edge);
    if (!fb || !edge) {
        free(fb);
        free(edge);
        return NULL;
    }
    double top = hz_to_mel(sample_rate / 2.0);
    for (int i = 0; i < n_mels + 2; i++)
        edge[i] = mel_to_hz(top * i / (n_mels + 1));
    for (int m = 0; m < n_mels; m++) {
        double lo = edge[m], mid = edge[m + 1], hi = edge[m + 2];
        for (int k = 0; k < bins; k++) {
            double f = (double)k * sample_rate / n_fft;
            double up = (f - lo) / (mid - lo), down = (hi - f) / (hi - mid);
            double w = up < down ? up : down;
            fb[(size_t)m * bins + k] = w > 0 ? (float)w : 0.0f;
        }
    }
    free(edge);
    return fb;
}

int quality_logmel(const float *pcm, int64_t n, int sample_rate, const quality_mel_opts *opts,
                   float **out, int *frames, int *n_mels, eng_error *err) {
    *out = NULL;
    quality_mel_opts o = {0};
    int rc = mel_settings(opts, sample_rate, &o, err);
    if (rc) return rc;
    if (n < 0 || n / o.hop + 1 > (1 << 24))
        return eng_errorf(err, ENG_EINVAL, "quality: %lld samples out of range", (long long)n);
    int nf = (int)(n / o.hop) + 1, bins = o.n_fft / 2 + 1;
    float *spec = malloc((size_t)nf * (size_t)o.n_mels * sizeof *spec);
    float *fb = mel_filters(o.n_mels, o.n_fft, sample_rate);
    double *re = malloc((size_t)o.n_fft * sizeof *re), *im = malloc((size_t)o.n_fft * sizeof *im);
    double *win = malloc((size_t)o.n_fft * sizeof *win), *mag = malloc((size_t)bins * sizeof *mag);
    if (!spec || !fb || !re || !im || !win || !mag) {
        rc = eng_errorf(err, ENG_ENOMEM, "quality: out of memory for a %d x %d mel spectrogram", nf,
                        o.n_mels);
        goto out;
    }
    double wsum = 0;
    for (int t = 0; t < o.n_fft; t++) {
        win[t] = 0.5 - 0.5 * cos(TWO_PI * t / o.n_fft); /* periodic Hann */
        wsum += win[t];
    }
    for (int j = 0; j < nf; j++) {
        int64_t start = (int64_t)j * o.hop - o.n_fft / 2;
        for (int t = 0; t < o.n_fft; t++) {
            int64_t s = start + t;
            re[t] = (s >= 0 && s < n) ? pcm[s] * win[t] : 0.0;
            im[t] = 0.0;
        }
        if ((rc = quality_fft(re, im, o.n_fft, err))) goto out;
        for (int k = 0; k < bins; k++)
            mag[k] = sqrt(re[k] * re[k] + im[k] * im[k]) / wsum;
        for (int m = 0; m < o.n_mels; m++) {
            const float *w = fb + (size_t)m * bins;
            double acc = 0;
            for (int k = 0; k < bins; k++)
                acc += w[k] * mag[k];
            spec[(size_t)j * o.n_mels + m] = (float)log(acc > o.floor ? acc : o.floor);
        }
    }
    *out = spec;
    spec = NULL;
    *frames = nf;
    *n_mels = o.n_mels;
out:
    free(spec);
    free(fb);
    free(re);
    free(im);
    free(win);
    free(mag);
    return rc;
}

int quality_mel_distance(const float *a, int64_t na, const float *b, int64_t nb, int sample_rate,
                         const quality_mel_opts *o, double *dist, eng_error *err) {
    *dist = 0;
    if (na == 0 && nb == 0) return 0;
    /* pad the shorter signal with silence to the common length */
    int64_t n = na > nb ? na : nb;
    float *pa = NULL, *pb = NULL, *ma = NULL, *mb = NULL;
    int fa = 0, fb = 0, mels = 0, rc;
    pa = calloc((size_t)n, sizeof *pa);
    pb = calloc((size_t)n, sizeof *pb);
    if (!pa || !pb) {
        rc = eng_errorf(err, ENG_ENOMEM, "quality: out of memory for %lld samples", (long long)n);
        goto out;
    }
    if (na) memcpy(pa, a, (size_t)na * sizeof *pa);
    if (nb) memcpy(pb, b, (size_t)nb * sizeof *pb);
    if ((rc = quality_logmel(pa, n, sample_rate, o, &ma, &fa, &mels, err)) ||
        (rc = quality_logmel(pb, n, sample_rate, o, &mb, &fb, &mels, err)))
        goto out;
    double acc = 0;
    size_t cells = (size_t)fa * (size_t)mels;
    for (size_t i = 0; i < cells; i++)
        acc += fabs((double)ma[i] - (double)mb[i]);
    *dist = cells ? acc / (double)cells : 0.0;
out:
    free(pa);
    free(pb);
    free(ma);
    free(mb);
    return rc;
}
