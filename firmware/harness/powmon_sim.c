/*
 * powmon_sim: the PowMon firmware on a simulated ATmega328P (16 MHz), hardware in the loop.
 *
 *   powmon_sim [--aref-mv MV] [--speed X] [--link PATH] [--adc-log PATH]
 *              [--ch N] (--mv MV | --sine-mv OFFSET:AMPLITUDE:HZ) ... firmware.elf
 *
 * UART0 is bridged to a fresh pseudo-terminal whose slave path is printed on stdout as
 * "PTY /dev/pts/N" once the board is ready (open it with any serial program or pyserial).
 * --mv / --sine-mv drive the analog input chosen by the last --ch (A0 by default); an input
 * with no value reads 0 mV. The value follows simulated time: it is computed at the instant
 * the firmware starts a conversion. Quantisation is the datasheet's ADC = Vin * 1024 / VREF
 * (floored, clipped to 0..1023); simavr's own 1023 scale is compensated for.
 * --speed 1 (default) keeps simulated time in step with the wall clock; 0 runs flat out.
 * --adc-log PATH appends "CHANNEL COUNT" for every conversion, in order: what the ADC produced,
 * for tests to compare with what the firmware reported.
 *
 * Faults, one command per line on stdin (a closed stdin is fine):
 *   reset      reset the MCU (the reset pin): the firmware starts again from scratch;
 *              "RESET" on stdout says it is done
 *   flip K     invert one bit of the K-th byte sent to the host from now (K >= 1), or of
 *              the first byte after it that is not 0xA5 (a frame's sync byte stays intact)
 *   drop K     lose that byte instead (the UART sent it, the host never gets it)
 *
 * The bridge is single-threaded (simavr's uart_pty part runs a thread without locking in
 * Debian's 1.6 and always rewrites the fixed /tmp/simavr-uart0 link, so several boards would
 * clash): host bytes are fed into the UART at most a few at a time, at the pace the firmware
 * drains them, so nothing is lost to the UART's small fifo, whatever the host sends.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "avr_adc.h"
#include "avr_uart.h"
#include "sim_avr.h"
#include "sim_elf.h"
#include "sim_io.h"
#include "sim_irq.h"
#include "sim_regbit.h"
#include "sim_time.h"

#define MCU_NAME "atmega328p"
#define MCU_HZ 16000000u
#define CHANNELS 6
#define CHUNK 2000          /* instructions between two looks at the pty */
#define UART_FILL 4         /* bytes kept queued in the simulated UART's input fifo */
#define QUEUE 8192
#define MAX_LAG_NS 200000000LL  /* further behind than this: stop trying to catch up */
#define LOG_FLUSH_NS 20000000LL  /* the ADC log is flushed at least this often */
#define SYNC_BYTE 0xA5           /* a stream frame's first byte: faults spare it */

typedef struct {
    double offset_mv, amplitude_mv, hz;
} wave_t;

typedef struct {
    uint8_t data[QUEUE];
    size_t len;
} queue_t;

static wave_t waves[CHANNELS];
static uint32_t aref_mv = 5000;
static queue_t to_avr, to_host;
static avr_uart_t *uart0;
static avr_irq_t *uart_input;
static volatile sig_atomic_t stopping;
static FILE *adc_log;
static int control = STDIN_FILENO;  /* fault commands; -1 once closed */
static char control_line[64];
static size_t control_len;
static enum { FAULT_NONE, FAULT_FLIP, FAULT_DROP } fault;
static long fault_countdown;  /* bytes to the host until the fault applies */

/* simavr's messages go to stderr, and only warnings and errors: stdout carries the PTY line. */
static void quiet_logger(avr_t *avr, const int level, const char *format, va_list ap) {
    (void)avr;
    if (level <= LOG_WARNING) vfprintf(stderr, format, ap);
}

static void on_signal(int sig) { (void)sig; stopping = 1; }

static void usage(FILE *out) {
    fprintf(out,
            "usage: powmon_sim [--aref-mv MV] [--speed X] [--link PATH] [--adc-log PATH]\n"
            "                  [--ch N] (--mv MV | --sine-mv OFFSET:AMPLITUDE:HZ) ... FIRMWARE.elf\n");
}

static void die(const char *what) {
    fprintf(stderr, "powmon_sim: %s\n", what);
    exit(2);
}

/* Ideal count at this instant, then the millivolts that make simavr (mv * 1023 / vref) give it. */
static uint32_t input_mv(int ch, double t) {
    const wave_t *w = &waves[ch];
    double mv = w->offset_mv + w->amplitude_mv * sin(2.0 * M_PI * w->hz * t);
    double count = floor(mv * 1024.0 / aref_mv);
    count = count < 0 ? 0 : (count > 1023 ? 1023 : count);
    return ((uint32_t)count * aref_mv + 1022u) / 1023u;
}

static void on_adc_trigger(struct avr_irq_t *irq, uint32_t value, void *param) {
    (void)irq;
    avr_t *avr = param;
    union {
        avr_adc_mux_t mux;
        uint32_t v;
    } e = {.v = value};
    if (e.mux.kind != ADC_MUX_SINGLE || e.mux.src >= CHANNELS) return;
    double t = (double)avr->cycle / avr->frequency;
    uint32_t mv = input_mv(e.mux.src, t);
    if (adc_log) fprintf(adc_log, "%d %u\n", e.mux.src, mv * 1023u / aref_mv);
    avr_raise_irq(avr_io_getirq(avr, AVR_IOCTL_ADC_GETIRQ, e.mux.src), mv);
}

static void on_uart_output(struct avr_irq_t *irq, uint32_t value, void *param) {
    (void)irq;
    (void)param;
    uint8_t byte = (uint8_t)value;
    if (fault != FAULT_NONE && --fault_countdown <= 0 && byte != SYNC_BYTE) {
        int drop = fault == FAULT_DROP;
        fault = FAULT_NONE;
        if (drop) return;
        byte ^= 0x10;
    }
    if (to_host.len < QUEUE) to_host.data[to_host.len++] = byte;  /* else: nobody reads */
}

static void parse_args(int argc, char **argv, double *speed, const char **link, const char **elf) {
    static const struct option opts[] = {
        {"ch", required_argument, 0, 'c'},      {"mv", required_argument, 0, 'm'},
        {"sine-mv", required_argument, 0, 's'}, {"aref-mv", required_argument, 0, 'a'},
        {"speed", required_argument, 0, 'x'},   {"link", required_argument, 0, 'l'},
        {"adc-log", required_argument, 0, 'g'}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    int ch = 0, opt;
    char *end;
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            ch = (int)strtol(optarg, &end, 10);
            if (*end || ch < 0 || ch >= CHANNELS) die("--ch: expected 0..5");
            break;
        case 'm':
            waves[ch] = (wave_t){strtod(optarg, &end), 0, 0};
            if (*end) die("--mv: expected millivolts, e.g. 2600");
            break;
        case 's':
            if (sscanf(optarg, "%lf:%lf:%lf", &waves[ch].offset_mv, &waves[ch].amplitude_mv,
                       &waves[ch].hz) != 3)
                die("--sine-mv: expected OFFSET:AMPLITUDE:HZ in mV, mV, Hz, e.g. 2500:1000:50");
            break;
        case 'a':
            aref_mv = (uint32_t)strtoul(optarg, &end, 10);
            if (*end || aref_mv < 1100 || aref_mv > 5500) die("--aref-mv: expected 1100..5500");
            break;
        case 'x':
            *speed = strtod(optarg, &end);
            if (*end || *speed < 0) die("--speed: expected a factor >= 0 (0: unthrottled)");
            break;
        case 'l': *link = optarg; break;
        case 'g':
            adc_log = fopen(optarg, "a");
            if (!adc_log) die("--adc-log: cannot open the file");
            break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        exit(2);
    }
    *elf = argv[optind];
}

static avr_t *make_board(const char *elf) {
    elf_firmware_t fw;
    memset(&fw, 0, sizeof fw);
    if (elf_read_firmware(elf, &fw) != 0) {
        fprintf(stderr, "powmon_sim: cannot read firmware %s\n", elf);
        exit(2);
    }
    strcpy(fw.mmcu, MCU_NAME);
    fw.frequency = MCU_HZ;
    fw.vcc = fw.avcc = fw.aref = aref_mv;
    avr_t *avr = avr_make_mcu_by_name(MCU_NAME);
    if (!avr || avr_init(avr) != 0) die("cannot make a simulated " MCU_NAME);
    avr->log = LOG_ERROR;
    avr_load_firmware(avr, &fw);
    avr->frequency = MCU_HZ;
    avr->vcc = avr->avcc = avr->aref = aref_mv;

    uint32_t flags = 0;  /* no console echo of UART output, no sleeping when the UART is polled */
    avr_ioctl(avr, AVR_IOCTL_UART_GET_FLAGS('0'), &flags);
    flags &= ~(uint32_t)(AVR_UART_FLAG_STDIO | AVR_UART_FLAG_POLL_SLEEP);
    avr_ioctl(avr, AVR_IOCTL_UART_SET_FLAGS('0'), &flags);
    uart_input = avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_INPUT);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUTPUT),
                            on_uart_output, NULL);
    for (avr_io_t *io = avr->io_port; io; io = io->next)
        if (strcmp(io->kind, "uart") == 0 && ((avr_uart_t *)io)->name == '0') uart0 = (avr_uart_t *)io;
    if (!uart0) die("no UART0 on the simulated MCU");
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_ADC_GETIRQ, ADC_IRQ_OUT_TRIGGER),
                            on_adc_trigger, avr);
    return avr;
}

/* simavr 1.6 times a UART byte as start + data + parity + stop bits, parity or not: at 115200
 * (117647 baud from UBRR 16 with U2X) that is 93.5 us a byte where 8N1 takes 85 us. Give the UART
 * the real 8N1 time, from the same registers, so that the simulated board carries what a real
 * one does (the firmware's stream limits rely on it). */
static void fix_uart_timing(avr_t *avr) {
    uint32_t ubrr = avr_regbit_get(avr, uart0->ubrrl) | (avr_regbit_get(avr, uart0->ubrrh) << 8);
    avr_cycle_count_t per_bit = (ubrr + 1) * (avr_regbit_get(avr, uart0->u2x) ? 8 : 16);
    static const int databits[] = {5, 6, 7, 8, 8, 8, 8, 9};
    int bits = 1 + databits[avr_regbit_get(avr, uart0->ucsz) | (avr_regbit_get(avr, uart0->ucsz2) << 2)]
               + 1 + avr_regbit_get(avr, uart0->usbs);
    uart0->cycles_per_byte = per_bit * (avr_cycle_count_t)bits;
}

/* Keep a few host bytes queued in the UART; hold them until the firmware enables RX. */
static void feed_uart(avr_t *avr) {
    if (!to_avr.len || !avr_regbit_get(avr, uart0->rxen)) return;
    size_t sent = 0;
    while (sent < to_avr.len) {
        unsigned level = (unsigned)(uart0->input.write - uart0->input.read) & (uart_fifo_fifo_size - 1);
        if (level >= UART_FILL) break;
        avr_raise_irq(uart_input, to_avr.data[sent++]);
    }
    memmove(to_avr.data, to_avr.data + sent, to_avr.len - sent);
    to_avr.len -= sent;
}

static void run_command(avr_t *avr, const char *line) {
    long k = 0;
    if (strcmp(line, "reset") == 0) {
        avr_reset(avr);
        to_avr.len = 0;  /* bytes on their way into the MCU die with it */
        printf("RESET\n");  /* after this line the firmware is booting afresh */
        fflush(stdout);
    } else if (sscanf(line, "flip %ld", &k) == 1 && k >= 1) {
        fault = FAULT_FLIP;
        fault_countdown = k;
    } else if (sscanf(line, "drop %ld", &k) == 1 && k >= 1) {
        fault = FAULT_DROP;
        fault_countdown = k;
    } else {
        fprintf(stderr, "powmon_sim: unknown command '%s' (reset, flip K, drop K)\n", line);
    }
}

static void read_control(avr_t *avr) {
    char buf[64];
    ssize_t n = read(control, buf, sizeof buf);
    if (n <= 0) {
        if (n == 0 || (errno != EAGAIN && errno != EINTR)) control = -1;  /* EOF: no more faults */
        return;
    }
    for (ssize_t i = 0; i < n; i++) {
        if (buf[i] == '\n') {
            control_line[control_len] = '\0';
            run_command(avr, control_line);
            control_len = 0;
        } else if (control_len < sizeof control_line - 1) {
            control_line[control_len++] = buf[i];
        }
    }
}

static void pump_pty(avr_t *avr, int master, int timeout_ns) {
    if (to_host.len) {
        ssize_t n = write(master, to_host.data, to_host.len);
        if (n > 0) {
            memmove(to_host.data, to_host.data + n, to_host.len - (size_t)n);
            to_host.len -= (size_t)n;
        }
    }
    struct pollfd pfd[2] = {{.fd = master, .events = to_avr.len < QUEUE ? POLLIN : 0},
                            {.fd = control, .events = POLLIN}};
    struct timespec ts = {timeout_ns / 1000000000, timeout_ns % 1000000000};
    if (ppoll(pfd, control >= 0 ? 2 : 1, &ts, NULL) > 0) {
        if (pfd[0].revents & POLLIN) {
            ssize_t n = read(master, to_avr.data + to_avr.len, QUEUE - to_avr.len);
            if (n > 0) to_avr.len += (size_t)n;
        }
        if (control >= 0 && (pfd[1].revents & (POLLIN | POLLHUP | POLLERR))) read_control(avr);
    }
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int run(avr_t *avr, int master, double speed) {
    int64_t wall0 = now_ns();
    int64_t flushed = wall0;
    avr_cycle_count_t cycle0 = avr->cycle;
    while (!stopping) {
        int state = cpu_Running;
        for (int i = 0; i < CHUNK && state != cpu_Done && state != cpu_Crashed; i++)
            state = avr_run(avr);
        if (state == cpu_Done || state == cpu_Crashed) {
            fprintf(stderr, "powmon_sim: the firmware stopped (state %d)\n", state);
            return 1;
        }
        fix_uart_timing(avr);
        feed_uart(avr);
        int64_t ahead = 0;
        if (speed > 0) {
            int64_t sim = (int64_t)avr_cycles_to_nsec(avr, avr->cycle - cycle0);
            int64_t wall = (int64_t)((now_ns() - wall0) * speed);
            ahead = (int64_t)((sim - wall) / speed);
            if (ahead < -MAX_LAG_NS) {  /* a stall (loaded machine): resume in step from here */
                wall0 = now_ns();
                cycle0 = avr->cycle;
                ahead = 0;
            }
        }
        pump_pty(avr, master, ahead > 100000 ? (int)(ahead < 50000000 ? ahead : 50000000) : 0);
        if (adc_log && now_ns() - flushed > LOG_FLUSH_NS) {
            fflush(adc_log);
            flushed = now_ns();
        }
    }
    if (adc_log) fclose(adc_log);
    return 0;
}

int main(int argc, char **argv) {
    double speed = 1.0;
    const char *link = NULL, *elf = NULL;
    parse_args(argc, argv, &speed, &link, &elf);
    avr_global_logger_set(quiet_logger);
    prctl(PR_SET_PDEATHSIG, SIGTERM);  /* never outlive the test or tool that started us */

    int master, slave;
    char name[128];
    if (openpty(&master, &slave, name, NULL, NULL) != 0) die("cannot open a pseudo-terminal");
    struct termios tio;  /* raw both ends: no echo of host bytes, no newline translation */
    tcgetattr(slave, &tio);
    cfmakeraw(&tio);
    tcsetattr(slave, TCSANOW, &tio);
    fcntl(master, F_SETFL, fcntl(master, F_GETFL) | O_NONBLOCK);
    fcntl(control, F_SETFL, fcntl(control, F_GETFL) | O_NONBLOCK);
    /* The slave stays open here so that the master never sees a hang-up between clients. */

    avr_t *avr = make_board(elf);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (link) {
        unlink(link);
        if (symlink(name, link) != 0) die("--link: cannot create the symlink");
    }
    printf("PTY %s\n", name);
    fflush(stdout);

    int rc = run(avr, master, speed);
    if (link) unlink(link);
    avr_terminate(avr);
    close(slave);
    close(master);
    return rc;
}
