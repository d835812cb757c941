// PowMon stream mode: the board samples on Timer1 and sends binary frames (docs/firmware.md).
//
// Timer1 (CTC) ticks at the stream rate. Each tick stamps micros(), takes the next sample
// number and starts an ADC conversion; the ADC interrupt chains the conversions a reported
// sample needs (K for `avg K`, a whole AC window for `mode ac`) and puts the finished sample in
// a ring. loop() turns samples into frames, as many per frame as `per_frame`, and writes a
// frame only when the UART's transmit buffer has room for all of it, so it never blocks.
// A tick that finds the previous sample unfinished, or the ring full, is lost on the device:
// its number is skipped, so the host sees a hole in the sequence, never a wrong value.
//
// Frame, little-endian, 10 + 2N bytes for N samples:
//   0      0xA5 sync (text answers never contain a byte >= 0x80)
//   1      N (1..16) in bits 0-4; bit 6: RMS values (mode ac); bit 7: means (avg K > 1)
//   2..3   sequence number of the first sample, low 16 bits (the first sample is 0)
//   4..7   micros() at the first sample's timer tick (its conversion starts then)
//   8..    N values, uint16, in 1/64 ADC counts
//   last 2 CRC-16/XMODEM of everything before it, high byte first
// Sample i of a frame was taken at time + i * period.

#ifndef POWMON_STREAM_H
#define POWMON_STREAM_H

#include <util/crc16.h>

#define STREAM_SYNC 0xA5
#define STREAM_MAX_PER_FRAME 16
#define STREAM_HEADER 8
#define STREAM_FRAME_MAX (STREAM_HEADER + 2 * STREAM_MAX_PER_FRAME + 2)
#define STREAM_FLAG_RMS 0x40
#define STREAM_FLAG_MEAN 0x80
#define STREAM_RING 32
// ADC conversions per second a stream may schedule (2286 CPU cycles each): one takes 13 ADC
// clocks (1664 cycles) after up to one ADC clock (128) waiting for its edge, then the ADC
// interrupt (~170), and a tick may wait behind Timer0's interrupt (~80). At 8000/s (2000
// cycles) the simulated board, which starts conversions without waiting, already lost some.
#define STREAM_ADC_BUDGET 7000UL
#define STREAM_WIRE_PERCENT 95UL  // frames may fill this much of the UART
#define STREAM_FRAME_MS 10        // a frame carries at most ~10 ms of samples, when the wire allows

// Interrupts add only 8, 16 and 32-bit numbers: avr-gcc makes 64-bit sums library calls that
// took the ADC interrupt to 41 us, past a sample's budget at 8 kHz. The sum of squares (up to
// ~2e10 over a 2 s AC window) is 32 bits plus a carry count, joined in loop().
struct StreamSlot {
  uint32_t seq;
  uint32_t t;
  uint32_t sum;
  uint32_t sq_lo;
  uint16_t sq_hi;
  uint16_t n;
};

// Start a conversion without writing 1 to ADIF, which would clear a pending ADC interrupt.
#define ADC_START() (ADCSRA = (uint8_t)((ADCSRA & ~_BV(ADIF)) | _BV(ADSC)))

static volatile bool stream_on = false;
static volatile bool acq_open = false;  // a sample is being converted
static volatile uint32_t stream_seq = 0;  // ticks so far = number of the next sample
static uint32_t acq_seq, acq_t, acq_sum, acq_sq_lo;
static uint16_t acq_sq_hi, acq_n;
static StreamSlot ring[STREAM_RING];
static volatile uint8_t ring_head = 0;  // written by the ADC interrupt
static volatile uint8_t ring_tail = 0;  // written by loop()

static uint8_t stream_k = 1;          // conversions per DC sample
static bool stream_ac = false;
static uint32_t stream_window_us = 0;  // AC window
static uint8_t stream_per_frame = 1;
static uint8_t frame[STREAM_FRAME_MAX];
static uint8_t frame_n = 0;
static uint32_t frame_seq = 0;

// The UART's real rate: the Arduino core rounds UBRR (double speed), so "115200" is 117647
// baud on 16 MHz but "230400" only 222222. The stream budgets the slower of the two.
#define STREAM_REAL_BAUD (F_CPU / 8 / ((F_CPU / 4 / POWMON_BAUD - 1) / 2 + 1))
#define STREAM_BAUD (STREAM_REAL_BAUD < POWMON_BAUD ? STREAM_REAL_BAUD : POWMON_BAUD)

// The highest rate the UART carries with 16-sample frames (42 bytes for 16 samples).
static uint32_t stream_wire_max_hz() {
  return STREAM_BAUD * STREAM_WIRE_PERCENT * STREAM_MAX_PER_FRAME / 42000UL;
}

// The highest rate for these settings: the ADC budget, the AC window, the wire.
static uint32_t stream_max_hz(uint8_t k, bool ac, uint16_t mains_hz, uint16_t cycles) {
  uint32_t adc = ac ? (uint32_t)mains_hz / cycles : STREAM_ADC_BUDGET / k;
  uint32_t wire = stream_wire_max_hz();
  return adc < wire ? adc : wire;
}

// Samples per frame: ~10 ms worth, more when the wire needs longer frames, 1..16.
static uint8_t stream_frame_size(uint32_t hz) {
  uint32_t n = hz * STREAM_FRAME_MS / 1000UL;
  if (n < 1) n = 1;
  if (n > STREAM_MAX_PER_FRAME) n = STREAM_MAX_PER_FRAME;
  // bytes/s = hz * (10 + 2n) / n must stay within the wire's share (x1000 for integers)
  while (n < STREAM_MAX_PER_FRAME &&
         hz * (10UL + 2UL * n) * 1000UL > STREAM_BAUD * STREAM_WIRE_PERCENT * n) {
    n++;
  }
  return (uint8_t)n;
}

// Timer1 period for hz, in whole microseconds the timer can count exactly: 1 us steps at
// prescaler 8 (hz >= 31), 4 us at 64 (hz 4..30), 16 us at 256 (hz 1..3).
static uint32_t stream_period_us(uint32_t hz, uint16_t *ticks, uint8_t *clock_select,
                                 uint8_t *us_shift) {
  uint32_t period = (1000000UL + hz / 2) / hz;
  if (hz >= 31) {
    *ticks = (uint16_t)(period * 2);
    *clock_select = _BV(CS11);
    *us_shift = 0;  // half microseconds: see stream_half_us
  } else if (hz >= 4) {
    period = (period + 2) / 4 * 4;
    *ticks = (uint16_t)(period / 4);
    *clock_select = _BV(CS11) | _BV(CS10);
    *us_shift = 2;
  } else {
    period = (period + 8) / 16 * 16;
    *ticks = (uint16_t)(period / 16);
    *clock_select = _BV(CS12);
    *us_shift = 4;
  }
  return period;
}

// Interrupt context: hand the finished sample to loop(); a full ring loses it (a hole).
static void acq_close() {
  acq_open = false;
  uint8_t next = ring_head + 1;  // no %: a division is a library call on the AVR
  if (next == STREAM_RING) next = 0;
  if (next == ring_tail) return;
  StreamSlot *s = &ring[ring_head];
  s->seq = acq_seq;
  s->t = acq_t;
  s->sum = acq_sum;
  s->sq_lo = acq_sq_lo;
  s->sq_hi = acq_sq_hi;
  s->n = acq_n;
  ring_head = next;
}

// Timer1 counts from 0 again at each tick (CTC): its count says how late this interrupt runs
// (behind another one), so the stamp is the tick's own instant, to micros()' 4 us.
static uint8_t stream_late_shift = 0;  // late us = TCNT1 << shift (>> 1 at prescaler 8)
static bool stream_half_us = false;

ISR(TIMER1_COMPA_vect) {
  uint16_t late = TCNT1;
  // The conversion starts first, before the bookkeeping: a sample's budget is tight at 8 kHz.
  // (The ADC interrupt cannot run before this one returns, so the state below is set in time.)
  if (!(acq_open && !stream_ac) && !(ADCSRA & _BV(ADSC))) ADC_START();
  uint32_t now = micros() - (stream_half_us ? late >> 1 : (uint32_t)late << stream_late_shift);
  uint32_t seq = stream_seq++;
  if (acq_open) {
    if (!stream_ac) return;  // the previous sample is still converting: this one is lost
    acq_close();             // an AC window as long as the period ends at the tick
  }
  acq_seq = seq;
  acq_t = now;
  acq_sum = 0;
  acq_sq_lo = 0;
  acq_sq_hi = 0;
  acq_n = 0;
  acq_open = true;
}

ISR(ADC_vect) {
  uint16_t x = ADC;
  if (!acq_open) return;  // the stream stopped, or the window closed: let the ADC rest
  acq_n++;
  acq_sum += x;
  if (stream_ac) {
    uint32_t sq = (uint32_t)x * x;
    acq_sq_lo += sq;
    if (acq_sq_lo < sq) acq_sq_hi++;
    if ((uint32_t)(micros() - acq_t) >= stream_window_us) {
      acq_close();
      return;
    }
  } else if (acq_n >= stream_k) {
    acq_close();
    return;
  }
  ADC_START();
}

// A sample in 1/64 counts: the mean of its conversions, or the RMS around their mean.
static uint16_t slot_value(const StreamSlot *s) {
  if (stream_ac) {
    if (!s->n) return 0;
    uint64_t sum_sq = ((uint64_t)s->sq_hi << 32) | s->sq_lo;
    uint64_t n2_var = (uint64_t)s->n * sum_sq - (uint64_t)s->sum * s->sum;
    return (uint16_t)(sqrtf((float)n2_var) / (float)s->n * 64.0f + 0.5f);
  }
  if (stream_k == 1) return (uint16_t)(s->sum << 6);
  return (uint16_t)((s->sum * 64UL + stream_k / 2) / stream_k);
}

static uint8_t frame_len(uint8_t n) { return STREAM_HEADER + 2 * n + 2; }

static void frame_begin(const StreamSlot *s) {
  frame_seq = s->seq;
  frame[0] = STREAM_SYNC;
  frame[2] = (uint8_t)s->seq;
  frame[3] = (uint8_t)(s->seq >> 8);
  frame[4] = (uint8_t)s->t;
  frame[5] = (uint8_t)(s->t >> 8);
  frame[6] = (uint8_t)(s->t >> 16);
  frame[7] = (uint8_t)(s->t >> 24);
}

static void frame_send() {
  uint8_t flags = stream_ac ? STREAM_FLAG_RMS : (stream_k > 1 ? STREAM_FLAG_MEAN : 0);
  frame[1] = frame_n | flags;
  uint8_t len = frame_len(frame_n) - 2;
  uint16_t crc = 0;
  for (uint8_t i = 0; i < len; i++) crc = _crc_xmodem_update(crc, frame[i]);
  frame[len] = (uint8_t)(crc >> 8);
  frame[len + 1] = (uint8_t)crc;
  Serial.write(frame, len + 2);
  frame_n = 0;
}

// Frames out of the ring. A full frame, or one cut short by a hole in the numbers, is written
// only when the UART buffer has room for it, unless `final` (stopping: wait for room).
static void stream_pump(bool final) {
  for (;;) {
    bool more = ring_tail != ring_head;
    bool gap = more && frame_n && ring[ring_tail].seq != frame_seq + frame_n;
    if (frame_n && (frame_n == stream_per_frame || gap || (final && !more))) {
      if (!final && Serial.availableForWrite() < frame_len(frame_n)) return;
      frame_send();
    }
    if (!more) return;
    const StreamSlot *s = &ring[ring_tail];
    if (!frame_n) frame_begin(s);
    uint16_t v = slot_value(s);
    frame[STREAM_HEADER + 2 * frame_n] = (uint8_t)v;
    frame[STREAM_HEADER + 2 * frame_n + 1] = (uint8_t)(v >> 8);
    frame_n++;
    ring_tail = ring_tail + 1 == STREAM_RING ? 0 : ring_tail + 1;
  }
}

// Start sampling `channel` at hz (already checked against stream_max_hz); answers the ack.
static void stream_start(uint32_t hz, uint8_t channel, uint8_t k, bool ac, uint32_t window_us) {
  uint16_t ticks;
  uint8_t clock_select;
  uint32_t period = stream_period_us(hz, &ticks, &clock_select, &stream_late_shift);
  stream_half_us = hz >= 31;
  stream_k = k;
  stream_ac = ac;
  stream_window_us = window_us;
  stream_per_frame = stream_frame_size(hz);
  stream_seq = 0;
  ring_head = ring_tail = 0;
  frame_n = 0;
  acq_open = false;
  // One conversion first: it settles the multiplexer, and the first conversion after the ADC
  // is enabled takes 25 ADC clocks instead of 13, too long for the first sample's period.
  analogRead(channel);
  ADMUX = _BV(REFS0) | (channel & 0x07);  // AVcc reference, as analogRead's DEFAULT
  ADCSRA |= _BV(ADIF) | _BV(ADIE);
  Serial.print(F("ok stream "));
  Serial.print(hz);
  Serial.print(' ');
  Serial.print(period);
  Serial.print(' ');
  Serial.println(stream_per_frame);
  stream_on = true;
  cli();
  TCCR1A = 0;
  TCCR1B = _BV(WGM12);  // CTC, TOP = OCR1A, stopped until the clock select below
  TCNT1 = 0;
  OCR1A = ticks - 1;
  TIFR1 = _BV(OCF1A);
  TIMSK1 = _BV(OCIE1A);
  TCCR1B = _BV(WGM12) | clock_select;
  sei();
}

// Stop: no more ticks, the sample being converted is dropped, what is finished goes out.
// Returns how many samples the stream numbered (the numbers 0..count-1).
static uint32_t stream_stop() {
  cli();
  TIMSK1 = 0;
  uint32_t count = acq_open ? acq_seq : stream_seq;
  acq_open = false;
  stream_on = false;
  sei();
  while (ADCSRA & _BV(ADSC)) {
  }
  ADCSRA &= ~_BV(ADIE);
  TCCR1B = _BV(CS11) | _BV(CS10);  // Timer1 back as the Arduino core's init() leaves it
  TCCR1A = _BV(WGM10);
  stream_pump(true);
  return count;
}

#endif
