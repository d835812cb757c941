// PowMon firmware: answers one line per request with ADC readings (an ACS712 on A0).
//
// Protocol (requests end with \n; \r, tabs and extra spaces are ignored; answers end \r\n):
//   read [N]              A0 (or AN, N = 0..5): raw count 0..1023, the mean of K samples
//                         with two decimals when `avg K` > 1, or the AC RMS in `mode ac`
//   r                     "ok" (the host uses it to drain the line)
//   id                    "POWMON <version> <board id>"
//   avg K                 K = 1..64 samples per DC reading: "ok avg K"
//   mode ac HZ CYCLES     RMS over CYCLES whole mains cycles: "ok ac HZ CYCLES"
//   mode dc               plain readings again: "ok dc"
//   stream HZ [N]         sample A0 (or AN) HZ times a second on Timer1 and send binary
//                         frames (stream.h): "ok stream HZ PERIOD_US PER_FRAME", or
//                         "err max M" when HZ is beyond what the ADC, the mode or the baud
//                         rate allow
//   stop                  end the stream: its last frames, then "ok stop COUNT" (samples
//                         numbered); "ok stop 0" when no stream runs
//   anything else         "err" (also for an over-long line or one with control bytes)
// An empty line gets no answer. Any other line received while streaming first ends the
// stream exactly as `stop` does, then gets its usual answer, so a host that knows nothing of
// streams still gets answers. The line buffer is fixed: no heap, no String class.

#include <Arduino.h>
#include <math.h>

#ifndef POWMON_BAUD
#define POWMON_BAUD 115200UL  // the host's BUDRATE must match
#endif
#ifndef POWMON_BOARD_ID
#define POWMON_BOARD_ID "UNO-0000"  // set per board: make BOARD_ID=UNO-0042
#endif
#define POWMON_VERSION "1.1.0"
#define POWMON_CAPABILITIES "stream"  // words after the board id in the `id` answer

#define LINE_MAX 48        // longest accepted request, including the terminator
#define MAX_ARGS 4         // "mode ac 50 5"
#define ANALOG_INPUTS 6    // A0..A5 on an Uno
#define MAX_WINDOW_US 2000000UL  // an AC reading never takes longer than 2 s

static char line[LINE_MAX];
static uint8_t line_len = 0;
static bool line_bad = false;  // over-long or control bytes: answer "err" at its newline

static uint8_t avg_count = 1;
static bool ac_mode = false;
static uint16_t ac_hz = 50;
static uint16_t ac_cycles = 5;

#include "stream.h"

// Parse a decimal in [lo, hi]; false on anything else (sign, junk, too many digits).
static bool parse_uint(const char *s, uint16_t lo, uint16_t hi, uint16_t *out) {
  uint32_t value = 0;
  uint8_t digits = 0;
  for (; *s; s++) {
    if (*s < '0' || *s > '9' || ++digits > 5) return false;
    value = value * 10 + (uint32_t)(*s - '0');
  }
  if (digits == 0 || value < lo || value > hi) return false;
  *out = (uint16_t)value;
  return true;
}

// Split in place on spaces, tabs and \r; returns MAX_ARGS + 1 when there are too many words.
static uint8_t split(char *s, char *argv[]) {
  uint8_t argc = 0;
  for (;;) {
    while (*s == ' ' || *s == '\t' || *s == '\r') *s++ = '\0';
    if (*s == '\0') return argc;
    if (argc == MAX_ARGS) return MAX_ARGS + 1;
    argv[argc++] = s;
    while (*s != '\0' && *s != ' ' && *s != '\t' && *s != '\r') s++;
  }
}

static void reply_err() { Serial.print(F("err\r\n")); }

static void read_dc(uint8_t channel) {
  uint32_t sum = 0;
  for (uint8_t i = 0; i < avg_count; i++) sum += (uint16_t)analogRead(channel);
  if (avg_count == 1) {
    Serial.println(sum);
    return;
  }
  // Mean with two decimals in integer math: hundredths, rounded half up.
  uint32_t centi = (sum * 100UL + avg_count / 2) / avg_count;
  Serial.print(centi / 100);
  Serial.print('.');
  uint8_t frac = (uint8_t)(centi % 100);
  if (frac < 10) Serial.print('0');
  Serial.println(frac);
}

// RMS of the deviation around the mean, sampled as fast as analogRead allows for exactly
// ac_cycles / ac_hz seconds: n^2 * variance = n * sum(x^2) - sum(x)^2, exact in 64 bits.
static void read_ac(uint8_t channel) {
  uint32_t window_us = (uint32_t)ac_cycles * 1000000UL / ac_hz;
  uint32_t n = 0;
  uint32_t sum = 0;
  uint64_t sum_sq = 0;
  analogRead(channel);  // settle the multiplexer before the window starts
  uint32_t start = micros();
  while ((uint32_t)(micros() - start) < window_us) {
    uint16_t x = (uint16_t)analogRead(channel);
    sum += x;
    sum_sq += (uint32_t)x * x;
    n++;
  }
  uint64_t n2_var = (uint64_t)n * sum_sq - (uint64_t)sum * sum;
  float rms = n ? sqrtf((float)n2_var) / (float)n : 0.0f;
  Serial.println(rms, 2);
}

static void cmd_read(uint8_t argc, char *argv[]) {
  uint16_t channel = 0;
  if (argc > 2 || (argc == 2 && !parse_uint(argv[1], 0, ANALOG_INPUTS - 1, &channel))) {
    reply_err();
  } else if (ac_mode) {
    read_ac((uint8_t)channel);
  } else {
    read_dc((uint8_t)channel);
  }
}

static void cmd_avg(uint8_t argc, char *argv[]) {
  uint16_t k;
  if (argc != 2 || !parse_uint(argv[1], 1, 64, &k)) {
    reply_err();
    return;
  }
  avg_count = (uint8_t)k;
  Serial.print(F("ok avg "));
  Serial.println(k);
}

static void cmd_mode(uint8_t argc, char *argv[]) {
  uint16_t hz, cycles;
  if (argc == 2 && strcmp(argv[1], "dc") == 0) {
    ac_mode = false;
    Serial.print(F("ok dc\r\n"));
  } else if (argc == 4 && strcmp(argv[1], "ac") == 0 && parse_uint(argv[2], 1, 1000, &hz) &&
             parse_uint(argv[3], 1, 255, &cycles) &&
             (uint32_t)cycles * 1000000UL / hz <= MAX_WINDOW_US) {
    ac_mode = true;
    ac_hz = hz;
    ac_cycles = cycles;
    Serial.print(F("ok ac "));
    Serial.print(hz);
    Serial.print(' ');
    Serial.println(cycles);
  } else {
    reply_err();
  }
}

static void cmd_stream(uint8_t argc, char *argv[]) {
  uint16_t hz, channel = 0;
  if (argc < 2 || argc > 3 || !parse_uint(argv[1], 1, 65535, &hz) ||
      (argc == 3 && !parse_uint(argv[2], 0, ANALOG_INPUTS - 1, &channel))) {
    reply_err();
    return;
  }
  uint32_t max_hz = stream_max_hz(avg_count, ac_mode, ac_hz, ac_cycles);
  if (hz > max_hz) {
    Serial.print(F("err max "));
    Serial.println(max_hz);
    return;
  }
  uint32_t window_us = (uint32_t)ac_cycles * 1000000UL / ac_hz;
  stream_start(hz, (uint8_t)channel, avg_count, ac_mode, window_us);
}

static void stop_streaming() {
  uint32_t count = stream_stop();
  Serial.print(F("ok stop "));
  Serial.println(count);
}

static void handle_line(char *s) {
  char *argv[MAX_ARGS];
  uint8_t argc = split(s, argv);
  if (argc == 0) return;  // blank line: nothing asked, nothing answered
  if (stream_on) {
    stop_streaming();  // any request ends the stream first; `stop` asks nothing more
    if (argc == 1 && strcmp(argv[0], "stop") == 0) return;
  }
  if (argc > MAX_ARGS) {
    reply_err();
  } else if (strcmp(argv[0], "read") == 0) {
    cmd_read(argc, argv);
  } else if (strcmp(argv[0], "r") == 0 && argc == 1) {
    Serial.print(F("ok\r\n"));
  } else if (strcmp(argv[0], "id") == 0 && argc == 1) {
    Serial.print(F("POWMON " POWMON_VERSION " " POWMON_BOARD_ID " " POWMON_CAPABILITIES "\r\n"));
  } else if (strcmp(argv[0], "avg") == 0) {
    cmd_avg(argc, argv);
  } else if (strcmp(argv[0], "mode") == 0) {
    cmd_mode(argc, argv);
  } else if (strcmp(argv[0], "stream") == 0) {
    cmd_stream(argc, argv);
  } else if (strcmp(argv[0], "stop") == 0 && argc == 1) {
    Serial.print(F("ok stop 0\r\n"));
  } else {
    reply_err();
  }
}

// Feed one received byte; a full line is handled at its '\n'.
static void take_byte(uint8_t c) {
  if (c == '\n') {
    if (line_bad) {
      if (stream_on) stop_streaming();
      reply_err();
    } else {
      line[line_len] = '\0';
      handle_line(line);
    }
    line_len = 0;
    line_bad = false;
  } else if (line_bad) {
    // discard the rest of a bad line up to its newline
  } else if ((c < ' ' && c != '\r' && c != '\t') || c > '~' || line_len >= LINE_MAX - 1) {
    line_bad = true;
  } else {
    line[line_len++] = (char)c;
  }
}

void setup() {
  Serial.begin(POWMON_BAUD);
}

void loop() {
  while (Serial.available() > 0) take_byte((uint8_t)Serial.read());
  if (stream_on) stream_pump(false);
}
