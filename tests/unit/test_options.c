/* daemon/options: defaults, config file, environment, flag override, bad values, reload. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "options.h"
#include "test.h"

static char errbuf[CDCDD_OPTIONS_ERR_MAX];

static void clean_env(void) {
    unsetenv("CDCDD_CONFIG");
    unsetenv("CDCDD_TOKEN");
    unsetenv("CREDENTIALS_DIRECTORY");
}

/* Writes text to tmpdir/name and returns the path (static buffer per slot). */
static const char *write_file(const char *name, const char *text) {
    static char paths[4][4096];
    static int slot;
    char *p = paths[slot++ % 4];
    snprintf(p, 4096, "%s/%s", test_tmpdir(), name);
    FILE *f = fopen(p, "w");
    if (!f) return NULL;
    fputs(text, f);
    fclose(f);
    return p;
}

/* parse() over a NULL-terminated list of arguments (argv[0] added). */
static int parse_args(cdcdd_options *o, const char **args) {
    static char *argv[64];
    int argc = 0;
    argv[argc++] = (char *)"cdcdd";
    for (int i = 0; args && args[i] && argc < 63; i++) argv[argc++] = (char *)args[i];
    argv[argc] = NULL;
    errbuf[0] = '\0';
    return cdcdd_options_parse(argc, argv, o, errbuf, sizeof errbuf);
}

TEST(test_options_defaults) {
    clean_env();
    cdcdd_options o;
    ASSERT(parse_args(&o, NULL) == CDCDD_OPTIONS_OK);
    EXPECT_STREQ(o.listen_host, "127.0.0.1");
    EXPECT(o.listen_port == 8080);
    EXPECT_STREQ(o.state_dir, CDCDD_DEFAULT_STATE_DIR);
    EXPECT_STREQ(o.data_dir, "data");
    EXPECT_STREQ(o.token, "");
    EXPECT_STREQ(o.config_path, "");
    EXPECT(o.max_runs == CDCDD_DEFAULT_MAX_RUNS);
    /* a lone run uses the whole machine: one run at a time, every online core */
    EXPECT(o.max_runs == 1);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    EXPECTF(cdcdd_options_threads_per_run(&o) == (cpus > 0 ? cpus : 1), "threads per run %d, online CPUs %ld",
            cdcdd_options_threads_per_run(&o), cpus);
    EXPECT(o.limits.max_body_bytes == CDCDD_DEFAULT_MAX_BODY_BYTES);
    EXPECT(o.limits.max_json_depth == CDCDD_DEFAULT_MAX_JSON_DEPTH);
    EXPECT(o.limits.max_connections == CDCDD_DEFAULT_MAX_CONNECTIONS);
    EXPECT(o.limits.max_connections_per_ip == CDCDD_DEFAULT_MAX_CONNECTIONS_PER_IP);
    EXPECT(o.limits.request_timeout_s == CDCDD_DEFAULT_REQUEST_TIMEOUT_S);
    EXPECT(o.limits.max_points == CDCDD_DEFAULT_MAX_POINTS);
    EXPECT(o.limits.max_sample_work == CDCDD_DEFAULT_MAX_SAMPLE_WORK);
    EXPECT(o.limits.max_sample_jobs == CDCDD_DEFAULT_MAX_SAMPLE_JOBS);
    EXPECT(o.limits.max_run_memory == CDCDD_DEFAULT_MAX_RUN_MEMORY);
    EXPECT(o.limits.max_runs_total == CDCDD_DEFAULT_MAX_RUNS_TOTAL && o.limits.max_runs_total == 1000);
    EXPECT(o.limits.header_timeout_s == CDCDD_DEFAULT_HEADER_TIMEOUT_S && o.limits.header_timeout_s == 10);
    EXPECT(o.limits.body_timeout_s == CDCDD_DEFAULT_BODY_TIMEOUT_S && o.limits.body_timeout_s == 60);
    EXPECT(o.limits.sse_buffer_budget == CDCDD_DEFAULT_SSE_BUFFER_BUDGET && o.limits.sse_buffer_budget == 64u << 20);
    EXPECT(o.auth == CDCDD_AUTH_AUTO && o.auth_metrics == 1);
    EXPECT_STREQ(o.allowed_hosts, "");
    EXPECT_STREQ(o.cors_origins, "");
    /* auth auto: reads open on loopback, closed elsewhere, and only with a token */
    EXPECT(!cdcdd_auth_reads_protected(&o));
    snprintf(o.token, sizeof o.token, "t");
    EXPECT(!cdcdd_auth_reads_protected(&o));
    snprintf(o.listen_host, sizeof o.listen_host, "0.0.0.0");
    EXPECT(cdcdd_auth_reads_protected(&o));
    o.auth = CDCDD_AUTH_WRITES;
    EXPECT(!cdcdd_auth_reads_protected(&o));
    snprintf(o.listen_host, sizeof o.listen_host, "::1");
    o.auth = CDCDD_AUTH_ALL;
    EXPECT(cdcdd_auth_reads_protected(&o));
    o.token[0] = '\0';
    EXPECT(!cdcdd_auth_reads_protected(&o));
    cdcdd_options_defaults(&o);
    EXPECT(o.log_level == CDCD_LOG_INFO);
    EXPECT(cdcdd_options_threads_per_run(&o) >= 1);
    cdcdd_options d;
    cdcdd_options_defaults(&d);
    EXPECT(cdcdd_options_diff(&o, &d) == 0);
}

TEST(test_options_file) {
    clean_env();
    const char *conf = write_file("a.conf",
                                  "# comment\n"
                                  "; another comment\n"
                                  "\n"
                                  "listen = 0.0.0.0:9090\n"
                                  "  state-dir   =   /var/lib/cdcdd   \n"
                                  "data_dir = \"/srv/data # not a comment\"\n"
                                  "web_dir =\n"
                                  "max_runs = 3   # inline comment\n"
                                  "threads_per_run = 4\n"
                                  "max_body_bytes = 64K\n"
                                  "max_run_memory = 2GiB\n"
                                  "max_points = 5000\n"
                                  "max_sample_work = 1000\n"
                                  "request_timeout = 10\n"
                                  "log_level = debug\n"
                                  "log_file = /tmp/cdcdd.log\n");
    ASSERT(conf);
    cdcdd_options o;
    const char *args[] = {"--config", conf, NULL};
    int rc = parse_args(&o, args);
    EXPECTF(rc == CDCDD_OPTIONS_OK, "rc %d: %.400s", rc, errbuf);
    EXPECT_STREQ(o.listen_host, "0.0.0.0");
    EXPECT(o.listen_port == 9090);
    EXPECT_STREQ(o.state_dir, "/var/lib/cdcdd");
    EXPECT_STREQ(o.data_dir, "/srv/data # not a comment");
    EXPECT_STREQ(o.web_dir, "");
    EXPECT(o.max_runs == 3);
    EXPECT(o.threads_per_run == 4);
    EXPECT(cdcdd_options_threads_per_run(&o) == 4);
    EXPECT(o.limits.max_body_bytes == 65536);
    EXPECT(o.limits.max_run_memory == 2ull << 30);
    EXPECT(o.limits.max_points == 5000);
    EXPECT(o.limits.max_sample_work == 1000);
    EXPECT(o.limits.request_timeout_s == 10);
    EXPECT(o.log_level == CDCD_LOG_DEBUG);
    EXPECT_STREQ(o.log_file, "/tmp/cdcdd.log");
    EXPECT_STREQ(o.config_path, conf);

    /* the same file through $CDCDD_CONFIG */
    setenv("CDCDD_CONFIG", conf, 1);
    cdcdd_options e;
    EXPECT(parse_args(&e, NULL) == CDCDD_OPTIONS_OK);
    EXPECT(e.listen_port == 9090);
    clean_env();
}

TEST(test_options_flags_override_file) {
    clean_env();
    const char *conf = write_file("b.conf", "listen = 10.0.0.1:9000\nmax_runs = 3\n"
                                            "log_level = warn\n");
    cdcdd_options o;
    const char *args[] = {"--max-runs", "5", "--config=", NULL};
    /* "--config=" (empty) means no file */
    EXPECT(parse_args(&o, args) == CDCDD_OPTIONS_OK);
    EXPECT(o.max_runs == 5);
    EXPECT_STREQ(o.config_path, "");

    const char *args2[] = {"--max-runs", "5", "-c", conf, "--port=9100", "--log_level", "error",
                           "--state-dir", "var2", NULL};
    int rc = parse_args(&o, args2);
    EXPECTF(rc == CDCDD_OPTIONS_OK, "%.400s", errbuf);
    EXPECT(o.max_runs == 5);             /* flag before --config still wins */
    EXPECT_STREQ(o.listen_host, "10.0.0.1"); /* from the file */
    EXPECT(o.listen_port == 9100);       /* --port keeps the host */
    EXPECT(o.log_level == CDCD_LOG_ERROR);
    EXPECT_STREQ(o.state_dir, "var2");

    const char *args3[] = {"--listen", "[::1]:8443", NULL};
    EXPECT(parse_args(&o, args3) == CDCDD_OPTIONS_OK);
    EXPECT_STREQ(o.listen_host, "::1");
    EXPECT(o.listen_port == 8443);
    const char *args4[] = {"--listen", ":7000", NULL};
    EXPECT(parse_args(&o, args4) == CDCDD_OPTIONS_OK);
    EXPECT_STREQ(o.listen_host, "127.0.0.1");
    EXPECT(o.listen_port == 7000);
    const char *args5[] = {"--listen", "::", NULL};
    EXPECT(parse_args(&o, args5) == CDCDD_OPTIONS_OK);
    EXPECT_STREQ(o.listen_host, "::");
    EXPECT(o.listen_port == 8080);
}

/* Expects the parse to fail with a message containing `needle`. */
static void expect_error(const char **args, const char *needle, int line) {
    cdcdd_options o;
    int rc = parse_args(&o, args);
    if (rc != CDCDD_OPTIONS_ERROR || !strstr(errbuf, needle)) {
        char msg[700];
        snprintf(msg, sizeof msg, "line %d: rc %d, error \"%s\" should mention \"%s\"", line, rc,
                 errbuf, needle);
        test_fail_(__FILE__, line, msg);
    }
}
#define EXPECT_ERROR(needle, ...)                                        \
    do {                                                                 \
        const char *a_[] = {__VA_ARGS__, NULL};                          \
        expect_error(a_, needle, __LINE__);                              \
    } while (0)

TEST(test_options_bad_values) {
    clean_env();
    EXPECT_ERROR("--max-runs: 0 is out of range", "--max-runs", "0");
    EXPECT_ERROR("not an integer", "--max-runs", "two");
    EXPECT_ERROR("not an integer", "--max-runs", "3x");
    EXPECT_ERROR("--port: 70000 is out of range", "--port", "70000");
    EXPECT_ERROR("--listen", "--listen", "127.0.0.1:http");
    EXPECT_ERROR("--listen", "--listen", "[::1");
    /* found by fuzz_options: a "bare IPv6" host with brackets dumped as "[$[:=$[:  ]]:8080",
     * which did not load back (tests/fuzz/corpus/fuzz_options/listen-brackets) */
    EXPECT_ERROR("--listen", "--listen", "$[:=$[:  ]");
    EXPECT_ERROR("--listen", "--listen", "a b:80");
    EXPECT_ERROR("--max-body-bytes", "--max-body-bytes", "12Q");
    EXPECT_ERROR("out of range", "--max-body-bytes", "10");
    EXPECT_ERROR("--log-level", "--log-level", "loud");
    EXPECT_ERROR("unknown flag \"--bogus\"", "--bogus", "1");
    EXPECT_ERROR("needs a value", "--max-runs");
    EXPECT_ERROR("unexpected argument \"extra\"", "extra");
    EXPECT_ERROR("--state-dir must not be empty", "--state-dir", "");
    EXPECT_ERROR("max_connections_per_ip (64) is larger", "--max-connections", "10",
                 "--max-connections-per-ip", "64");
    EXPECT_ERROR("below 64M", "--max-run-memory", "1M");
    EXPECT_ERROR("--auth: \"reads\" is not one of auto, writes, all", "--auth", "reads");
    EXPECT_ERROR("--auth-metrics", "--auth-metrics", "maybe");
    EXPECT_ERROR("--header-timeout: 0 is out of range", "--header-timeout", "0");
    EXPECT_ERROR("--max-runs-total: 0 is out of range", "--max-runs-total", "0");
    EXPECT_ERROR("config file /nonexistent/cdcdd.conf", "--config", "/nonexistent/cdcdd.conf");

    char arg[64];
    const char *f1 = write_file("bad1.conf", "max_runs = 2\nfrobnicate = yes\n");
    snprintf(arg, sizeof arg, ":2: unknown setting \"frobnicate\"");
    EXPECT_ERROR(arg, "--config", f1);
    const char *f2 = write_file("bad2.conf", "[daemon]\nmax_runs = 2\n");
    EXPECT_ERROR(":1: sections are not used", "--config", f2);
    const char *f3 = write_file("bad3.conf", "max_runs 2\n");
    EXPECT_ERROR(":1: expected key = value", "--config", f3);
    const char *f4 = write_file("bad4.conf", "\n\nmax_json_depth = 5000\n");
    EXPECT_ERROR(":3: max_json_depth: 5000 is out of range", "--config", f4);
    const char *f5 = write_file("bad5.conf", "data_dir = \"/srv\n");
    EXPECT_ERROR("unterminated quote", "--config", f5);
    const char *f6 = write_file("bad6.conf", "config = /etc/other.conf\n");
    EXPECT_ERROR("config cannot be set inside", "--config", f6);

    /* cdcdd_options_set is the single-setting entry point */
    cdcdd_options o;
    cdcdd_options_defaults(&o);
    EXPECT(cdcdd_options_set(&o, "max-sample-jobs", "7", errbuf, sizeof errbuf) == 0);
    EXPECT(o.limits.max_sample_jobs == 7);
    EXPECT(cdcdd_options_set(&o, "nope", "7", errbuf, sizeof errbuf) == CDCDD_OPTIONS_ERROR);
    EXPECT(strstr(errbuf, "unknown setting") != NULL);
}

TEST(test_options_token_sources) {
    clean_env();
    cdcdd_options o;
    const char *tf = write_file("token", "  s3cret-file-token  \nsecond line ignored\n");
    const char *conf_tf = NULL;
    {
        char text[4200];
        snprintf(text, sizeof text, "token_file = %s\n", tf);
        conf_tf = write_file("tok.conf", text);
    }
    const char *args[] = {"--config", conf_tf, NULL};
    EXPECT(parse_args(&o, args) == CDCDD_OPTIONS_OK);
    EXPECT_STREQ(o.token, "s3cret-file-token");
    EXPECT_STREQ(o.token_file, tf);

    setenv("CDCDD_TOKEN", "env-token", 1); /* env beats the file */
    EXPECT(parse_args(&o, args) == CDCDD_OPTIONS_OK);
    EXPECT_STREQ(o.token, "env-token");
    EXPECT_STREQ(o.token_file, "");

    const char *args2[] = {"--config", conf_tf, "--token", "flag-token", NULL};
    EXPECT(parse_args(&o, args2) == CDCDD_OPTIONS_OK); /* flag beats env */
    EXPECT_STREQ(o.token, "flag-token");
    const char *args3[] = {"--token-file", tf, NULL};
    EXPECT(parse_args(&o, args3) == CDCDD_OPTIONS_OK);
    EXPECT_STREQ(o.token, "s3cret-file-token");
    clean_env();

    EXPECT_ERROR("token_file /nonexistent", "--token-file", "/nonexistent/token");
    const char *empty = write_file("empty-token", "\n  \n");
    EXPECT_ERROR("is empty", "--token-file", empty);
    EXPECT_ERROR("printable ASCII", "--token", "has space");

    /* systemd LoadCredential=token:... shows up as $CREDENTIALS_DIRECTORY/token */
    setenv("CREDENTIALS_DIRECTORY", test_tmpdir(), 1);
    EXPECT(parse_args(&o, NULL) == CDCDD_OPTIONS_OK);
    EXPECT_STREQ(o.token, "s3cret-file-token");
    setenv("CDCDD_TOKEN", "env-wins", 1); /* an explicit token beats the credential */
    EXPECT(parse_args(&o, NULL) == CDCDD_OPTIONS_OK);
    EXPECT_STREQ(o.token, "env-wins");
    clean_env();
    /* an empty credential means no token, not an error */
    char cred[4096];
    snprintf(cred, sizeof cred, "%s/cred", test_tmpdir());
    mkdir(cred, 0700);
    write_file("cred/token", "\n");
    setenv("CREDENTIALS_DIRECTORY", cred, 1);
    EXPECT(parse_args(&o, NULL) == CDCDD_OPTIONS_OK);
    EXPECT_STREQ(o.token, "");
    clean_env();
}

TEST(test_options_help_version) {
    clean_env();
    cdcdd_options o;
    fflush(stdout);
    FILE *saved = stdout;
    char path[4096];
    snprintf(path, sizeof path, "%s/help.txt", test_tmpdir());
    FILE *cap = fopen(path, "w+");
    ASSERT(cap);
    stdout = cap;
    const char *h[] = {"--max-runs", "0", "--help", NULL}; /* help wins over bad values */
    int rc_help = parse_args(&o, h);
    const char *v[] = {"-V", NULL};
    int rc_ver = parse_args(&o, v);
    fflush(cap);
    stdout = saved;
    rewind(cap);
    char text[16384];
    size_t n = fread(text, 1, sizeof text - 1, cap);
    text[n] = '\0';
    fclose(cap);
    EXPECT(rc_help == CDCDD_OPTIONS_EXIT);
    const char *t[] = {"--token", "-h", NULL}; /* a value that looks like a flag */
    EXPECT(parse_args(&o, t) == CDCDD_OPTIONS_OK);
    EXPECT_STREQ(o.token, "-h");
    EXPECT(rc_ver == CDCDD_OPTIONS_EXIT);
    EXPECT(strstr(text, "--state-dir DIR") != NULL);
    EXPECT(strstr(text, "--max-connections-per-ip N") != NULL);
    EXPECT(strstr(text, "cdcdd " CDCD_VERSION "\n") != NULL);
}

TEST(test_options_reload) {
    clean_env();
    const char *conf = write_file("r.conf", "max_runs = 2\nlog_level = info\nlisten = :8080\n");
    static char *argv[] = {"cdcdd", "--config", NULL, "--threads-per-run", "3", NULL};
    static char conf_copy[4096];
    snprintf(conf_copy, sizeof conf_copy, "%s", conf);
    argv[2] = conf_copy;
    cdcdd_options cur, next;
    unsigned changed = 99;
    ASSERT(cdcdd_options_parse(5, argv, &cur, errbuf, sizeof errbuf) == CDCDD_OPTIONS_OK);

    EXPECT(cdcdd_options_reload(&cur, &next, &changed, errbuf, sizeof errbuf) == 0);
    EXPECT(changed == 0);

    write_file("r.conf", "max_runs = 4\nlog_level = debug\nlisten = :9000\n"
                         "threads_per_run = 8\nmax_points = 10\n");
    EXPECT(cdcdd_options_reload(&cur, &next, &changed, errbuf, sizeof errbuf) == 0);
    EXPECT(changed == (CDCDD_OPT_F_MAX_RUNS | CDCDD_OPT_F_LOG_LEVEL | CDCDD_OPT_F_LISTEN |
                       CDCDD_OPT_F_LIMITS_REQ));
    EXPECT(next.threads_per_run == 3); /* the flag still overrides the file */
    EXPECT(next.max_runs == 4);
    EXPECT((changed & CDCDD_OPT_NEEDS_RESTART) == CDCDD_OPT_F_LISTEN);
    char desc[256];
    EXPECT_STREQ(cdcdd_options_describe_changes(changed, desc, sizeof desc),
                 "listen, max_runs, request limits, log_level");
    EXPECT_STREQ(cdcdd_options_describe_changes(0, desc, sizeof desc), "nothing");

    write_file("r.conf", "max_runs = many\n");
    changed = 99;
    EXPECT(cdcdd_options_reload(&cur, &next, &changed, errbuf, sizeof errbuf) ==
           CDCDD_OPTIONS_ERROR);
    EXPECT(changed == 0);
    EXPECT(strstr(errbuf, "r.conf:1: max_runs") != NULL);
    EXPECT(cur.max_runs == 2); /* untouched */
}

TEST(test_options_dump_roundtrip) {
    clean_env();
    cdcdd_options o;
    const char *args[] = {"--listen", "[::1]:9999", "--max-run-memory", "0", "--web-dir", "",
                          "--log-level", "warn", "--max-sample-work", "77", NULL};
    ASSERT(parse_args(&o, args) == CDCDD_OPTIONS_OK);
    char path[4096];
    snprintf(path, sizeof path, "%s/dump.conf", test_tmpdir());
    FILE *f = fopen(path, "w");
    ASSERT(f);
    cdcdd_options_dump(&o, f);
    fclose(f);
    cdcdd_options back;
    const char *args2[] = {"--config", path, NULL};
    int rc = parse_args(&back, args2);
    EXPECTF(rc == CDCDD_OPTIONS_OK, "%.400s", errbuf);
    EXPECT(cdcdd_options_diff(&o, &back) == 0);
}

/* The shipped example configuration parses and matches the documented values. */
TEST(test_options_example_config) {
    clean_env();
    const char *root = getenv("CDCD_ROOT");
    char path[4096];
    snprintf(path, sizeof path, "%s/systemd/cdcdd.conf", root && *root ? root : ".");
    if (access(path, R_OK) != 0) {
        printf("  # %s not found (run from the repository root)\n", path);
        ASSERT(0);
    }
    cdcdd_options o;
    const char *args[] = {"--config", path, NULL};
    int rc = parse_args(&o, args);
    EXPECTF(rc == CDCDD_OPTIONS_OK, "%.400s", errbuf);
    EXPECT_STREQ(o.state_dir, "/var/lib/cdcdd");
    EXPECT_STREQ(o.data_dir, "/var/lib/cdcdd/data");
    EXPECT_STREQ(o.listen_host, "127.0.0.1");
    EXPECT(o.listen_port == 8080);
    /* every limit in the example equals the compiled-in default */
    cdcdd_options d;
    cdcdd_options_defaults(&d);
    EXPECT(memcmp(&o.limits, &d.limits, sizeof d.limits) == 0);
    EXPECT(o.max_runs == d.max_runs && o.threads_per_run == d.threads_per_run);
}

int main(void) {
    RUN(test_options_defaults);
    RUN(test_options_file);
    RUN(test_options_flags_override_file);
    RUN(test_options_bad_values);
    RUN(test_options_token_sources);
    RUN(test_options_help_version);
    RUN(test_options_reload);
    RUN(test_options_dump_roundtrip);
    RUN(test_options_example_config);
    return test_summary();
}
