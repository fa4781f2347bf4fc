/* Publishes std_msgs/String on a ROS 2 topic with Cyclone DDS's C API, as a C++ ROS 2
 * node does through rmw_cyclonedds (topic "rt/<name>", type
 * "std_msgs::msg::dds_::String_"), each message "<send time ns> <seq> xxx..." padded to
 * a size. Used by benches/bridge.rs, which builds it with gcc against Cyclone DDS 0.10.
 *
 * usage: cyclone_pub --domain D --topic /t --count N --rate R --size S
 * (rate 0 = as fast as possible). Waits until a reader matches, then publishes, then
 * prints the seconds it took and the CPU seconds this process (Cyclone's threads
 * included) used meanwhile.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <dds/dds.h>

typedef struct String_ {
  char *data;
} String_;

/* The type's serialization program: one string member. */
static const uint32_t string_ops[] = {
  DDS_OP_ADR | DDS_OP_TYPE_STR, offsetof(String_, data),
  DDS_OP_RTS
};

static const dds_topic_descriptor_t string_desc = {
  .m_size = sizeof(String_),
  .m_align = sizeof(char *),
  .m_flagset = 0u,
  .m_nkeys = 0u,
  .m_typename = "std_msgs::msg::dds_::String_",
  .m_keys = NULL,
  .m_nops = 2,
  .m_ops = string_ops,
  .m_meta = "",
};

static double seconds(clockid_t clock) {
  struct timespec t;
  clock_gettime(clock, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static long long now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void usage(void) {
  fprintf(stderr, "usage: cyclone_pub --domain D --topic /t --count N --rate R --size S\n");
  exit(2);
}

int main(int argc, char **argv) {
  long domain = -1, count = -1, size = 100;
  double rate = 0;
  const char *topic = NULL;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--domain")) domain = atol(argv[i + 1]);
    else if (!strcmp(argv[i], "--topic")) topic = argv[i + 1];
    else if (!strcmp(argv[i], "--count")) count = atol(argv[i + 1]);
    else if (!strcmp(argv[i], "--rate")) rate = atof(argv[i + 1]);
    else if (!strcmp(argv[i], "--size")) size = atol(argv[i + 1]);
    else usage();
  }
  if (domain < 0 || count < 0 || topic == NULL || topic[0] != '/') usage();

  dds_entity_t dp = dds_create_participant((dds_domainid_t)domain, NULL, NULL);
  if (dp < 0) {
    fprintf(stderr, "cyclone_pub: cannot create a participant: %s\n", dds_strretcode(dp));
    return 1;
  }
  dds_qos_t *qos = dds_create_qos();
  dds_qset_reliability(qos, DDS_RELIABILITY_RELIABLE, DDS_SECS(10));
  dds_qset_history(qos, DDS_HISTORY_KEEP_LAST, 1000);
  char name[256];
  snprintf(name, sizeof name, "rt%s", topic);
  dds_entity_t tp = dds_create_topic(dp, &string_desc, name, qos, NULL);
  dds_entity_t wr = tp < 0 ? tp : dds_create_writer(dp, tp, qos, NULL);
  dds_delete_qos(qos);
  if (wr < 0) {
    fprintf(stderr, "cyclone_pub: cannot create the writer: %s\n", dds_strretcode(wr));
    return 1;
  }
  dds_publication_matched_status_t st = {0};
  for (int i = 0; i < 2000 && st.current_count < 1; i++) {
    dds_get_publication_matched_status(wr, &st);
    if (st.current_count < 1) dds_sleepfor(DDS_MSECS(10));
  }
  if (st.current_count < 1) {
    fprintf(stderr, "cyclone_pub: no reader matched %s within 20 s\n", name);
    return 1;
  }
  dds_sleepfor(DDS_MSECS(200));

  long padn = size > 30 ? size - 30 : 0;
  char *pad = malloc((size_t)padn + 1);
  memset(pad, 'x', (size_t)padn);
  pad[padn] = '\0';
  char *text = malloc((size_t)padn + 64);
  String_ msg = {.data = text};

  double start = seconds(CLOCK_MONOTONIC);
  double cpu_start = seconds(CLOCK_PROCESS_CPUTIME_ID);
  /* Paced runs sleep only once they are 0.5 ms ahead of the schedule, as the bare
   * publisher's clock allows: a sleep per message would cost a wake-up per message. */
  for (long i = 0; i < count; i++) {
    if (rate > 0) {
      double d = start + (double)i / rate - seconds(CLOCK_MONOTONIC);
      if (d > 0.0005) dds_sleepfor((dds_duration_t)(d * 1e9));
    }
    snprintf(text, (size_t)padn + 64, "%lld %ld %s", now_ns(), i, pad);
    dds_return_t rc = dds_write(wr, &msg);
    if (rc < 0) {
      fprintf(stderr, "cyclone_pub: write failed: %s\n", dds_strretcode(rc));
      return 1;
    }
  }
  printf("%.6f %.6f\n", seconds(CLOCK_MONOTONIC) - start,
         seconds(CLOCK_PROCESS_CPUTIME_ID) - cpu_start);
  fflush(stdout);
  dds_sleepfor(DDS_SECS(1));
  dds_delete(dp);
  free(text);
  free(pad);
  return 0;
}
