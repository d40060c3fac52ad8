/* Unicode cleanup before CLIP's BPE: the exact steps of tests/data/sd-tiny/ref/tokenizer.json "rules". Every
 * character property comes from utf8proc; the few code points named here are the rules' own special cases. */
#include "text/clip_tokenizer.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "core/error.h"

static int is_category(int32_t c, utf8proc_category_t lo, utf8proc_category_t hi)
{
    utf8proc_category_t cat = utf8proc_category(c);
    return cat >= lo && cat <= hi;
}

int lsdi_clip_is_space(int32_t c)
{
    /* White_Space = the Z* categories plus these controls. */
    return (c >= 0x09 && c <= 0x0D) || c == 0x85 || is_category(c, UTF8PROC_CATEGORY_ZS, UTF8PROC_CATEGORY_ZP);
}

int lsdi_clip_is_letter(int32_t c)
{
    return is_category(c, UTF8PROC_CATEGORY_LU, UTF8PROC_CATEGORY_LO);
}

int lsdi_clip_is_number(int32_t c)
{
    return is_category(c, UTF8PROC_CATEGORY_ND, UTF8PROC_CATEGORY_NO);
}

static int is_letter_or_number(int32_t c)
{
    return lsdi_clip_is_letter(c) || lsdi_clip_is_number(c);
}

int lsdi_clip_is_other(int32_t c)
{
    return !lsdi_clip_is_space(c) && !is_letter_or_number(c) && !is_letter_or_number(utf8proc_toupper(c)) &&
           !is_letter_or_number(utf8proc_tolower(c));
}

/* Python's isspace() adds the information separators U+001C..U+001F to White_Space. */
static int is_py_space(int32_t c)
{
    return lsdi_clip_is_space(c) || (c >= 0x1C && c <= 0x1F);
}

/* Copies bytes s[0..len) to out (room for 3 * len), invalid sequences replaced the way CPython's decoder does:
 * one U+FFFD per maximal prefix of a well-formed sequence (Unicode table 3-7). Returns the bytes written. */
static size_t utf8_replace_invalid(const unsigned char *s, size_t len, unsigned char *out)
{
    size_t n = 0, i = 0;
    while (i < len) {
        unsigned b = s[i];
        int need = b < 0x80                   ? 0
                   : b >= 0xC2 && b <= 0xDF ? 1
                   : b >= 0xE0 && b <= 0xEF ? 2
                   : b >= 0xF0 && b <= 0xF4 ? 3
                                            : -1; /* never a lead byte */
        unsigned lo = b == 0xE0 ? 0xA0 : b == 0xF0 ? 0x90 : 0x80;
        unsigned hi = b == 0xED ? 0x9F : b == 0xF4 ? 0x8F : 0xBF;
        size_t j = i + 1;
        int got = 0;
        while (got < need && j < len && s[j] >= lo && s[j] <= hi) {
            j++;
            got++;
            lo = 0x80;
            hi = 0xBF;
        }
        if (got == need) {
            memcpy(out + n, s + i, j - i);
            n += j - i;
        } else {
            memcpy(out + n, "\xEF\xBF\xBD", 3);
            n += 3;
        }
        i = j;
    }
    return n;
}

/* Case_Ignorable = Mn, Me, Cf, Lm, Sk and Word_Break MidLetter, MidNumLet, Single_Quote (listed here: utf8proc
 * has no word-break property). */
static int is_case_ignorable(int32_t c)
{
    static const int32_t mid[] = {0x27,   0x2E,   0x3A,   0xB7,   0x387,  0x55F,  0x5F4,  0x2018, 0x2019,
                                  0x2024, 0x2027, 0xFE13, 0xFE52, 0xFE55, 0xFF07, 0xFF0E, 0xFF1A};
    utf8proc_category_t cat = utf8proc_category(c);
    if (cat == UTF8PROC_CATEGORY_MN || cat == UTF8PROC_CATEGORY_ME || cat == UTF8PROC_CATEGORY_CF ||
        cat == UTF8PROC_CATEGORY_LM || cat == UTF8PROC_CATEGORY_SK)
        return 1;
    for (size_t i = 0; i < sizeof mid / sizeof mid[0]; i++)
        if (mid[i] == c)
            return 1;
    return 0;
}

static int is_cased(int32_t c)
{
    return is_category(c, UTF8PROC_CATEGORY_LU, UTF8PROC_CATEGORY_LT) || utf8proc_islower(c) ||
           utf8proc_isupper(c);
}

/* CPython's handle_capital_sigma: U+03A3 lowers to final U+03C2 after a cased letter (case-ignorables between)
 * unless a cased letter follows (case-ignorables between). */
static int32_t lower_sigma(const int32_t *s, size_t n, size_t i)
{
    size_t j = i;
    while (j > 0 && is_case_ignorable(s[j - 1]))
        j--;
    if (j == 0 || !is_cased(s[j - 1]))
        return 0x3C3;
    j = i + 1;
    while (j < n && is_case_ignorable(s[j]))
        j++;
    return j < n && is_cased(s[j]) ? 0x3C3 : 0x3C2;
}

lsd_status lsdi_clip_normalize(const char *text, int32_t **cps_out, size_t *n_out)
{
    *cps_out = NULL;
    *n_out = 0;
    size_t len = strlen(text);
    if (len > (size_t)PTRDIFF_MAX / 16)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "prompt of %zu bytes is too long", len);
    unsigned char *clean = malloc(3 * len + 1);
    if (!clean)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "prompt of %zu bytes: out of memory", len);
    utf8proc_ssize_t clean_len = (utf8proc_ssize_t)utf8_replace_invalid((const unsigned char *)text, len, clean);

    /* NFC: decomposition with canonical reordering, then composition in place. */
    const utf8proc_option_t nfc_opts = UTF8PROC_STABLE | UTF8PROC_COMPOSE;
    utf8proc_ssize_t nfc = utf8proc_decompose(clean, clean_len, NULL, 0, nfc_opts);
    int32_t *buf = NULL;
    if (nfc >= 0) {
        utf8proc_ssize_t m = nfc;
        buf = (size_t)m < (size_t)PTRDIFF_MAX / sizeof(int32_t) ? malloc(((size_t)m + 1) * sizeof *buf) : NULL;
        nfc = !buf ? UTF8PROC_ERROR_NOMEM : utf8proc_decompose(clean, clean_len, buf, m, nfc_opts);
        if (nfc > m)
            nfc = UTF8PROC_ERROR_OVERFLOW;
        if (nfc >= 0)
            nfc = utf8proc_normalize_utf32(buf, nfc, nfc_opts);
    }
    free(clean);
    if (nfc < 0) {
        free(buf);
        return lsdi_error(nfc == UTF8PROC_ERROR_NOMEM ? LSD_ERR_OUT_OF_MEMORY : LSD_ERR_INTERNAL,
                          "prompt of %zu bytes: NFC failed: %s", len, utf8proc_errmsg(nfc));
    }

    /* Whitespace runs -> one space, in place. */
    size_t w = 0;
    int in_run = 0;
    for (size_t i = 0; i < (size_t)nfc; i++) {
        int sp = lsdi_clip_is_space(buf[i]);
        if (!sp)
            buf[w++] = buf[i];
        else if (!in_run)
            buf[w++] = 0x20;
        in_run = sp;
    }
    size_t start = 0, end = w;
    while (start < end && is_py_space(buf[start]))
        start++;
    while (end > start && is_py_space(buf[end - 1]))
        end--;

    int32_t *out = malloc((2 * (end - start) + 1) * sizeof *out);
    if (!out) {
        free(buf);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "prompt of %zu bytes: out of memory", len);
    }
    const int32_t *s = buf + start;
    size_t sn = end - start, o = 0;
    for (size_t i = 0; i < sn; i++) {
        if (s[i] == 0x130) { /* the one code point whose full lower-case mapping differs from the simple one */
            out[o++] = 0x69;
            out[o++] = 0x307;
        } else if (s[i] == 0x3A3) {
            out[o++] = lower_sigma(s, sn, i);
        } else {
            out[o++] = utf8proc_tolower(s[i]);
        }
    }
    free(buf);
    *cps_out = out;
    *n_out = o;
    return LSD_OK;
}
