/* test_domain.c — host names: validation with its reasons, canonical form
 * (case, trailing dot), length limits, and Host header / SNI values. */
#include "check.h"
#include "domain.h"

static char out[DOMAIN_MAX + 1];
static const char *why;

static int canon(const char *s)
{
    why = "unset";
    return domain_canonicalize(s, strlen(s), out, sizeof out, &why);
}

static int host(const char *s)
{
    return domain_from_host_header(s, strlen(s), out, sizeof out);
}

static void test_canonical_form_folds_case_and_root_dot(void)
{
    CHECK(canon("WWW.Example.COM.") == 15);
    CHECK_STR(out, "www.example.com");
    CHECK(why == NULL);
    CHECK(canon("localhost") == 9);
    CHECK(canon("xn--bcher-kva.example") == 21);    /* IDNs arrive as punycode */
    CHECK(canon("1.2.3.4") == 7);                   /* syntactically a host name */
    CHECK(canon("a-b--c.x0") == 9);
    CHECK(canon("0") == 1);
}

static void test_invalid_names_say_why(void)
{
    CHECK(canon("") == -1);
    CHECK_STR(why, "empty name");
    CHECK(canon(".") == -1);
    CHECK_STR(why, "empty name");
    CHECK(canon("..") == -1);
    CHECK_STR(why, "empty label (two dots in a row, or a leading dot)");
    CHECK(canon(".a.com") == -1);
    CHECK_STR(why, "empty label (two dots in a row, or a leading dot)");
    CHECK(canon("a..com") == -1);
    CHECK(canon("a.com..") == -1);                  /* only one trailing dot */
    CHECK(canon("-a.com") == -1);
    CHECK_STR(why, "label starts with '-'");
    CHECK(canon("a.b-") == -1);
    CHECK_STR(why, "label ends with '-'");
    CHECK(canon("a_b.com") == -1);
    CHECK_STR(why, "only letters, digits, '-' and '.' are allowed");
    CHECK(canon("a b") == -1);
    CHECK(canon("a:80") == -1);
    CHECK(canon("caf\xc3\xa9.fr") == -1);
    CHECK(domain_canonicalize("a\0b", 3, out, sizeof out, &why) == -1);
    CHECK(out[0] == '\0');                          /* nothing half-written on failure */
    CHECK(domain_canonicalize("a.com", 5, out, 5, &why) == -1);   /* no room for the NUL */
    CHECK_STR(why, "name does not fit the output buffer");
    CHECK(domain_canonicalize("a.com", 5, out, 6, NULL) == 5);    /* err may be NULL */
}

static void test_length_limits(void)
{
    char name[300];

    memset(name, 'a', 63);
    CHECK(domain_canonicalize(name, 63, out, sizeof out, &why) == 63);
    memset(name, 'a', 64);
    CHECK(domain_canonicalize(name, 64, out, sizeof out, &why) == -1);
    CHECK_STR(why, "label longer than 63 characters");
    /* 253 characters: three labels of 63, one of 61, joined by dots. */
    memset(name, 'a', sizeof name);
    name[63] = name[127] = name[191] = '.';
    CHECK(domain_canonicalize(name, 253, out, sizeof out, &why) == 253);
    CHECK(domain_canonicalize(name, 254, out, sizeof out, &why) == -1);
    CHECK_STR(why, "name longer than 253 characters");
    name[253] = '.';   /* with the root dot it is still 253 */
    CHECK(domain_canonicalize(name, 254, out, sizeof out, &why) == 253);
}

static void test_host_header_strips_port(void)
{
    CHECK(host("Example.com:8080") == 11);
    CHECK_STR(out, "example.com");
    CHECK(host("example.com") == 11);
    CHECK(host("example.com.") == 11);
    CHECK(host("example.com.:443") == 11);
    CHECK_STR(out, "example.com");
    CHECK(host("example.com:") == 11);              /* RFC 3986: the port may be empty */
    CHECK(host("example.com:8x") == -1);
    CHECK(host("example.com:-1") == -1);
    CHECK(host("a:1:2") == -1);
    CHECK(host("[::1]:8080") == -1);                /* IP literals never match a route */
    CHECK(host("[::1]") == -1);
    CHECK(host("") == -1);
    CHECK(host(":80") == -1);
    CHECK(host("bad_host:80") == -1);
    CHECK(out[0] == '\0');
}

int main(void)
{
    test_canonical_form_folds_case_and_root_dot();
    test_invalid_names_say_why();
    test_length_limits();
    test_host_header_strips_port();
    return check_report("test_domain");
}
