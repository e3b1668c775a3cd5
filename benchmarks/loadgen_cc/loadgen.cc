// A compiled gRPC load generator for `make bench` (benchmarks/compiled.py drives it).
//
// It sends pre-serialised request messages (a file of little-endian uint32 length-prefixed
// messages, e.g. benchmarks.traffic.write_pool's) through grpc::GenericStub on one thread and one
// CompletionQueue, cycling through them, so that the client costs little and the same bytes can be
// sent to any service:
//
//   unary   closed loop: --inflight calls outstanding, each answer sends the next call;
//   open    unary at a fixed offered --rate (Poisson arrivals), whatever the answers do; besides the
//           latency from the send, the p99 counted from the scheduled time and the send slip (gRPC
//           wakes a waiting completion queue to the millisecond, so sends slip by about that);
//   stream  --inflight bidirectional streams, --depth messages in flight on each (1, the default:
//           ping-pong; more: the next messages are written before the answers come, as a client
//           that streams what it has does).
//
// A run lasts --warmup seconds unmeasured, then --seconds measured, or --count measured calls
// (messages, for streams). Calls sent in the measured phase are counted when they complete, and
// the run ends once they all have: sent == ok + errors. Over the same span it reads its own CPU
// (getrusage: every thread, gRPC's included), the CPU of each --watch-pid (/proc/<pid>/stat, all
// threads), and the machine's busy share (/proc/stat). It prints one JSON line on stdout.
//
// --unique-ids PREFIX appends field 1 (ScreenRequest.request_id: for a scalar field the last
// occurrence wins) as "<PREFIX>-<n>" to every message, so a cycled request is not answered from the
// service's idempotency record. Loopback targets only.

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kUsage =
    "usage: loadgen --target 127.0.0.1:PORT --method /pkg.Service/Method --requests FILE\n"
    "               [--mode unary|open|stream] [--inflight N] [--channels N] [--rate R]\n"
    "               [--seconds S | --count N] [--warmup S] [--timeout S] [--max-outstanding N] [--depth N]\n"
    "               [--metadata key=value]... [--unique-ids PREFIX] [--watch-pid PID]... [--seed N]\n";

class UsageError : public std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Options {
  std::string target;
  std::string method;
  std::string requests;
  std::string mode = "unary";
  int inflight = 16;
  int channels = 2;
  double rate = 0;
  double seconds = 5;
  uint64_t count = 0;  // 0: run for --seconds
  double warmup = 0;
  double timeout = 10;
  uint64_t max_outstanding = 10000;
  int depth = 1;  // stream mode: messages in flight per stream
  std::vector<std::pair<std::string, std::string>> metadata;
  std::string unique_ids;
  std::vector<int> watch_pids;
  uint64_t seed = 1;
};

double ParseNumber(const std::string& flag, const std::string& text) {
  size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || !std::isfinite(value) || value < 0) {
    throw UsageError(flag + ": not a non-negative number: " + text);
  }
  return value;
}

bool IsLoopback(const std::string& target) {
  const std::string host = target.substr(0, target.rfind(':'));
  return host.rfind("127.", 0) == 0 || host == "localhost" || host == "[::1]" || host == "ipv4:127.0.0.1";
}

Options ParseOptions(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (i + 1 >= argc) throw UsageError(flag + ": needs a value");
    const std::string value = argv[++i];
    if (flag == "--target") {
      o.target = value;
    } else if (flag == "--method") {
      o.method = value;
    } else if (flag == "--requests") {
      o.requests = value;
    } else if (flag == "--mode") {
      o.mode = value;
    } else if (flag == "--inflight") {
      o.inflight = static_cast<int>(ParseNumber(flag, value));
    } else if (flag == "--channels") {
      o.channels = static_cast<int>(ParseNumber(flag, value));
    } else if (flag == "--rate") {
      o.rate = ParseNumber(flag, value);
    } else if (flag == "--seconds") {
      o.seconds = ParseNumber(flag, value);
    } else if (flag == "--count") {
      o.count = static_cast<uint64_t>(ParseNumber(flag, value));
    } else if (flag == "--warmup") {
      o.warmup = ParseNumber(flag, value);
    } else if (flag == "--timeout") {
      o.timeout = ParseNumber(flag, value);
    } else if (flag == "--max-outstanding") {
      o.max_outstanding = static_cast<uint64_t>(ParseNumber(flag, value));
    } else if (flag == "--depth") {
      o.depth = static_cast<int>(ParseNumber(flag, value));
    } else if (flag == "--metadata") {
      const size_t eq = value.find('=');
      if (eq == std::string::npos || eq == 0) throw UsageError("--metadata: expected key=value, got " + value);
      std::string key = value.substr(0, eq);
      std::transform(key.begin(), key.end(), key.begin(), [](unsigned char c) { return std::tolower(c); });
      o.metadata.emplace_back(key, value.substr(eq + 1));
    } else if (flag == "--unique-ids") {
      o.unique_ids = value;
    } else if (flag == "--watch-pid") {
      o.watch_pids.push_back(static_cast<int>(ParseNumber(flag, value)));
    } else if (flag == "--seed") {
      o.seed = static_cast<uint64_t>(ParseNumber(flag, value));
    } else {
      throw UsageError("unknown option " + flag);
    }
  }
  if (o.target.empty() || o.method.empty() || o.requests.empty()) {
    throw UsageError("--target, --method and --requests are required");
  }
  if (!IsLoopback(o.target)) throw UsageError("loopback targets only, got " + o.target);
  if (o.mode != "unary" && o.mode != "open" && o.mode != "stream") throw UsageError("--mode: unary, open or stream");
  if ((o.mode == "open") != (o.rate > 0)) throw UsageError("--rate goes with --mode open, and only with it");
  if (o.inflight < 1 || o.channels < 1) throw UsageError("--inflight and --channels must be >= 1");
  if (o.depth < 1) throw UsageError("--depth must be >= 1");
  if (o.depth > 1 && o.mode != "stream") throw UsageError("--depth goes with --mode stream, and only with it");
  if (o.count == 0 && o.seconds <= 0) throw UsageError("--seconds must be > 0 (or give --count)");
  if (o.unique_ids.size() > 100) throw UsageError("--unique-ids: at most 100 characters");
  return o;
}

// ------------------------------------------------------------------------------------ requests

std::vector<std::string> ReadMessages(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> out;
  size_t at = 0;
  while (at < data.size()) {
    if (data.size() - at < 4) throw std::runtime_error(path + ": truncated length prefix");
    const auto* p = reinterpret_cast<const unsigned char*>(data.data() + at);
    const uint32_t size = p[0] | (p[1] << 8) | (p[2] << 16) | (static_cast<uint32_t>(p[3]) << 24);
    at += 4;
    if (data.size() - at < size) throw std::runtime_error(path + ": truncated message");
    out.push_back(data.substr(at, size));
    at += size;
  }
  if (out.empty()) throw std::runtime_error(path + ": no messages");
  return out;
}

// The messages in a cycle, each optionally with a fresh request id appended.
class Requests {
 public:
  Requests(std::vector<std::string> messages, std::string unique_prefix)
      : messages_(std::move(messages)), prefix_(std::move(unique_prefix)) {
    for (const std::string& m : messages_) {
      grpc::Slice slice(m);
      buffers_.emplace_back(&slice, 1);
    }
  }

  grpc::ByteBuffer Next() {
    const size_t index = next_++ % messages_.size();
    if (prefix_.empty()) return buffers_[index];
    const std::string id = prefix_ + "-" + std::to_string(next_);
    std::string data = messages_[index];
    data.push_back('\x0a');  // field 1, length-delimited
    data.push_back(static_cast<char>(id.size()));  // < 128: a one-byte varint
    data += id;
    grpc::Slice slice(data);
    return grpc::ByteBuffer(&slice, 1);
  }

 private:
  std::vector<std::string> messages_;
  std::vector<grpc::ByteBuffer> buffers_;
  std::string prefix_;
  uint64_t next_ = 0;
};

// ----------------------------------------------------------------------------- measurement

double ProcessCpuSeconds(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  const std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return std::nan("");
  std::istringstream fields(stat.substr(paren + 2));  // from field 3 (state) on
  std::string field;
  double utime = 0;
  double stime = 0;
  for (int n = 3; n <= 15 && fields >> field; ++n) {
    if (n == 14) utime = std::stod(field);
    if (n == 15) stime = std::stod(field);
  }
  return (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

struct Snapshot {
  Clock::time_point at;
  double user = 0;
  double sys = 0;
  std::vector<double> watched;
  double busy = 0;
  double total = 0;

  static Snapshot Take(const std::vector<int>& pids) {
    Snapshot s;
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    s.user = usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6;
    s.sys = usage.ru_stime.tv_sec + usage.ru_stime.tv_usec / 1e6;
    for (int pid : pids) s.watched.push_back(ProcessCpuSeconds(pid));
    std::ifstream in("/proc/stat");
    std::string cpu;
    in >> cpu;
    double jiffies = 0;
    for (int n = 0; n < 10 && in >> jiffies; ++n) {
      s.total += jiffies;
      if (n != 3 && n != 4) s.busy += jiffies;  // all but idle and iowait
    }
    s.at = Clock::now();
    return s;
  }
};

double Percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return std::nan("");
  const auto rank = static_cast<long>(std::llround(q * static_cast<double>(sorted.size()))) - 1;
  return sorted[std::clamp<long>(rank, 0, static_cast<long>(sorted.size()) - 1)];
}

std::string Number(double value) {
  if (!std::isfinite(value)) return "null";
  std::ostringstream out;
  out.precision(6);
  out << value;
  return out.str();
}

const char* CodeName(grpc::StatusCode code) {
  static const char* const kNames[] = {
      "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
      "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
      "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  const int index = static_cast<int>(code);
  return index >= 0 && index <= 16 ? kNames[index] : "UNKNOWN";
}

// -------------------------------------------------------------------------------------- runner

enum class Phase { kWarmup, kMeasure, kDrain };

struct UnaryCall {
  grpc::ClientContext context;
  grpc::ByteBuffer reply;
  grpc::Status status;
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> reader;
  Clock::time_point sent;
  Clock::time_point scheduled;  // open loop: when the schedule wanted it sent
  bool measured = false;
};

struct Stream;

// A stream has up to one write and one read outstanding at once: each completes on a tag of its own.
struct StreamTag {
  enum class Op { kStart, kWrite, kRead, kClose, kFinish };
  Stream* stream;
  Op op;
};

struct Stream {
  grpc::ClientContext context;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> rw;
  grpc::ByteBuffer reply;
  grpc::Status status;
  StreamTag start{this, StreamTag::Op::kStart}, write{this, StreamTag::Op::kWrite}, read{this, StreamTag::Op::kRead},
      close{this, StreamTag::Op::kClose}, finish{this, StreamTag::Op::kFinish};
  bool writing = false, reading = false, closing = false, failed = false;
  // The messages written and not answered yet, oldest first: when each was sent, and whether it is measured.
  std::deque<std::pair<Clock::time_point, bool>> awaiting;
};

class Runner {
 public:
  explicit Runner(const Options& options)
      : o_(options), requests_(ReadMessages(options.requests), options.unique_ids), random_(options.seed) {
    for (int i = 0; i < o_.channels; ++i) {
      grpc::ChannelArguments args;
      args.SetInt("grpc.use_local_subchannel_pool", 1);  // a connection of its own per channel
      args.SetInt("grpc.channel_id", i);
      auto channel = grpc::CreateCustomChannel(o_.target, grpc::InsecureChannelCredentials(), args);
      if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
        throw std::runtime_error("cannot connect to " + o_.target);
      }
      stubs_.push_back(std::make_unique<grpc::GenericStub>(channel));
    }
  }

  Runner(const Runner&) = delete;
  Runner& operator=(const Runner&) = delete;

  ~Runner() {
    cq_.Shutdown();
    void* tag = nullptr;
    bool ok = false;
    while (cq_.Next(&tag, &ok)) {
    }
  }

  void Run() {
    start_ = Clock::now();
    warm_end_ = start_ + Seconds(o_.warmup);
    if (o_.warmup <= 0) BeginMeasuring();
    if (o_.mode == "stream") {
      RunStreams();
    } else {
      RunUnary();
    }
    end_ = Snapshot::Take(o_.watch_pids);
  }

  std::string Json() const {
    std::vector<double> latency = latency_us_;
    std::vector<double> slip = slip_us_;
    std::sort(latency.begin(), latency.end());
    std::vector<double> from_schedule = from_schedule_us_;
    std::sort(slip.begin(), slip.end());
    std::sort(from_schedule.begin(), from_schedule.end());
    const double elapsed = std::chrono::duration<double>(end_.at - begin_.at).count();
    const double user = end_.user - begin_.user;
    const double sys = end_.sys - begin_.sys;
    std::ostringstream out;
    out << "{\"mode\":\"" << o_.mode << "\",\"method\":\"" << o_.method << "\",\"inflight\":" << o_.inflight
        << ",\"depth\":" << o_.depth
        << ",\"channels\":" << o_.channels << ",\"rate\":" << (o_.rate > 0 ? Number(o_.rate) : "null")
        << ",\"sent\":" << sent_ << ",\"ok\":" << ok_ << ",\"errors\":{";
    const char* sep = "";
    for (const auto& [code, n] : errors_) {
      out << sep << "\"" << code << "\":" << n;
      sep = ",";
    }
    out << "},\"dropped\":" << dropped_ << ",\"elapsed_s\":" << Number(elapsed)
        << ",\"rps\":" << Number(elapsed > 0 ? ok_ / elapsed : std::nan(""))
        << ",\"client_cpu_s\":" << Number(user + sys) << ",\"client_user_s\":" << Number(user)
        << ",\"client_sys_s\":" << Number(sys) << ",\"latency_ms\":{";
    const std::pair<const char*, double> quantiles[] = {{"p50", 0.5}, {"p90", 0.9}, {"p99", 0.99}, {"p999", 0.999}};
    for (const auto& [name, q] : quantiles) out << "\"" << name << "\":" << Number(Percentile(latency, q) / 1e3) << ",";
    out << "\"max\":" << Number(latency.empty() ? std::nan("") : latency.back() / 1e3) << "}";
    const bool open = o_.mode == "open";
    out << ",\"from_schedule_p99_ms\":" << (open ? Number(Percentile(from_schedule, 0.99) / 1e3) : "null");
    out << ",\"slip_p99_ms\":" << (open ? Number(Percentile(slip, 0.99) / 1e3) : "null");
    out << ",\"watched_cpu_s\":{";
    for (size_t i = 0; i < o_.watch_pids.size(); ++i) {
      out << (i ? "," : "") << "\"" << o_.watch_pids[i] << "\":" << Number(end_.watched[i] - begin_.watched[i]);
    }
    const double total = end_.total - begin_.total;
    out << "},\"machine_busy_fraction\":" << Number(total > 0 ? (end_.busy - begin_.busy) / total : std::nan(""))
        << "}";
    return out.str();
  }

 private:
  static Clock::duration Seconds(double s) {
    return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
  }

  // gRPC takes deadlines on the system clock only.
  static std::chrono::system_clock::time_point SystemTime(Clock::time_point at) {
    return std::chrono::system_clock::now() +
           std::chrono::duration_cast<std::chrono::system_clock::duration>(at - Clock::now());
  }

  void BeginMeasuring() {
    phase_ = Phase::kMeasure;
    begin_ = Snapshot::Take(o_.watch_pids);
    measure_end_ = begin_.at + Seconds(o_.seconds);
  }

  // The phase at `now`: the warm-up ends by time, the measured phase by time or by count.
  void Advance(Clock::time_point now) {
    if (phase_ == Phase::kWarmup && now >= warm_end_) BeginMeasuring();
    if (phase_ == Phase::kMeasure && (o_.count ? sent_ >= o_.count : now >= measure_end_)) phase_ = Phase::kDrain;
  }

  Clock::time_point Boundary() const {
    if (phase_ == Phase::kWarmup) return warm_end_;
    if (phase_ == Phase::kMeasure && !o_.count) return measure_end_;
    return Clock::now() + std::chrono::milliseconds(200);
  }

  bool Sending() const { return phase_ != Phase::kDrain; }

  void Note(bool measured, bool ok, grpc::StatusCode code, Clock::time_point from, Clock::time_point done) {
    if (!measured) return;
    if (ok) {
      ++ok_;
      latency_us_.push_back(std::chrono::duration<double, std::micro>(done - from).count());
    } else {
      ++errors_[CodeName(code)];
    }
  }

  grpc::GenericStub& NextStub() { return *stubs_[next_channel_++ % stubs_.size()]; }

  // ------------------------------------------------------------------------------- unary calls

  void StartUnary(Clock::time_point scheduled) {
    auto* call = new UnaryCall;
    call->context.set_deadline(SystemTime(Clock::now() + Seconds(o_.timeout)));
    for (const auto& [key, value] : o_.metadata) call->context.AddMetadata(key, value);
    call->measured = phase_ == Phase::kMeasure;
    const Clock::time_point now = Clock::now();
    call->sent = now;
    call->scheduled = scheduled;
    if (call->measured) {
      ++sent_;
      if (o_.mode == "open") slip_us_.push_back(std::chrono::duration<double, std::micro>(now - scheduled).count());
    }
    call->reader = NextStub().PrepareUnaryCall(&call->context, o_.method, requests_.Next(), &cq_);
    call->reader->StartCall();
    call->reader->Finish(&call->reply, &call->status, call);
    ++outstanding_;
    Advance(now);  // a fixed count may be complete now
  }

  void RunUnary() {
    const bool open = o_.mode == "open";
    std::exponential_distribution<double> gap(open ? o_.rate : 1.0);
    Clock::time_point next_send = Clock::now();
    if (!open) {
      for (int i = 0; i < o_.inflight && Sending(); ++i) StartUnary(Clock::now());
    }
    while (true) {
      Clock::time_point deadline = Boundary();
      if (open && Sending()) deadline = std::min(deadline, next_send);
      void* tag = nullptr;
      bool ok = false;
      const auto got = cq_.AsyncNext(&tag, &ok, SystemTime(deadline));
      const Clock::time_point now = Clock::now();
      Advance(now);
      if (got == grpc::CompletionQueue::GOT_EVENT) {
        std::unique_ptr<UnaryCall> call(static_cast<UnaryCall*>(tag));
        --outstanding_;
        Note(call->measured, call->status.ok(), call->status.error_code(), call->sent, now);
        if (open && call->measured && call->status.ok()) {
          from_schedule_us_.push_back(std::chrono::duration<double, std::micro>(now - call->scheduled).count());
        }
        if (!open && Sending()) StartUnary(now);
      } else if (got == grpc::CompletionQueue::SHUTDOWN) {
        break;
      }
      while (open && Sending() && next_send <= Clock::now()) {
        if (outstanding_ < o_.max_outstanding) {
          StartUnary(next_send);
        } else if (phase_ == Phase::kMeasure) {
          ++dropped_;
        }
        next_send += Seconds(gap(random_));
      }
      if (!Sending() && outstanding_ == 0) break;
    }
  }

  // ----------------------------------------------------------------------------------- streams

  // Writes while the stream has fewer than --depth messages in flight (one write at a time), reads
  // while any is unanswered, and closes once sending is over and every answer is in.
  void Pump(Stream* s) {
    if (s->closing) return;
    if (s->failed) {
      if (!s->writing && !s->reading) Finish(s);
      return;
    }
    if (!s->writing && Sending() && static_cast<int>(s->awaiting.size()) < o_.depth) {
      const Clock::time_point now = Clock::now();
      const bool measured = phase_ == Phase::kMeasure;
      if (measured) ++sent_;
      s->awaiting.emplace_back(now, measured);
      s->writing = true;
      s->rw->Write(requests_.Next(), &s->write);
      Advance(now);
    }
    if (!s->reading && !s->awaiting.empty()) {
      s->reading = true;
      s->rw->Read(&s->reply, &s->read);
    }
    if (!Sending() && !s->writing && !s->reading && s->awaiting.empty()) {
      s->closing = true;
      s->rw->WritesDone(&s->close);
    }
  }

  void Finish(Stream* s) {
    s->closing = true;
    s->rw->Finish(&s->status, &s->finish);
  }

  void OnStream(StreamTag* tag, bool ok, Clock::time_point now) {
    Stream* s = tag->stream;
    switch (tag->op) {
      case StreamTag::Op::kStart:
        s->failed = !ok;
        return Pump(s);
      case StreamTag::Op::kWrite:
        s->writing = false;
        s->failed = s->failed || !ok;
        return Pump(s);
      case StreamTag::Op::kRead:
        s->reading = false;
        if (!ok) {
          s->failed = true;
        } else {
          Note(s->awaiting.front().second, true, grpc::StatusCode::OK, s->awaiting.front().first, now);
          s->awaiting.pop_front();
        }
        return Pump(s);
      case StreamTag::Op::kClose:
        return Finish(s);
      case StreamTag::Op::kFinish: {
        std::unique_ptr<Stream> done(s);
        --outstanding_;
        const grpc::StatusCode code = s->status.ok() ? grpc::StatusCode::UNKNOWN : s->status.error_code();
        bool counted = false;
        for (const auto& [sent_at, measured] : s->awaiting) {
          if (measured) {
            Note(true, false, code, sent_at, now);  // its message was never answered
            counted = true;
          }
        }
        if (!counted && !s->status.ok() && phase_ != Phase::kWarmup) ++errors_[CodeName(code)];
        return;
      }
    }
  }

  void RunStreams() {
    for (int i = 0; i < o_.inflight; ++i) {
      auto* s = new Stream;
      for (const auto& [key, value] : o_.metadata) s->context.AddMetadata(key, value);
      s->rw = NextStub().PrepareCall(&s->context, o_.method, &cq_);
      s->rw->StartCall(&s->start);
      ++outstanding_;
    }
    while (outstanding_ > 0) {
      void* tag = nullptr;
      bool ok = false;
      const auto got = cq_.AsyncNext(&tag, &ok, SystemTime(Boundary()));
      const Clock::time_point now = Clock::now();
      Advance(now);
      if (got == grpc::CompletionQueue::GOT_EVENT) OnStream(static_cast<StreamTag*>(tag), ok, now);
      if (got == grpc::CompletionQueue::SHUTDOWN) break;
    }
  }

  const Options& o_;
  Requests requests_;
  std::mt19937_64 random_;
  std::vector<std::unique_ptr<grpc::GenericStub>> stubs_;
  grpc::CompletionQueue cq_;
  size_t next_channel_ = 0;

  Phase phase_ = Phase::kWarmup;
  Clock::time_point start_, warm_end_, measure_end_;
  Snapshot begin_, end_;
  uint64_t sent_ = 0, ok_ = 0, dropped_ = 0, outstanding_ = 0;
  std::map<std::string, uint64_t> errors_;
  std::vector<double> latency_us_, slip_us_, from_schedule_us_;
};

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options options = ParseOptions(argc, argv);
    Runner runner(options);
    runner.Run();
    std::cout << runner.Json() << std::endl;
    return 0;
  } catch (const UsageError& e) {
    std::cerr << "loadgen: " << e.what() << "\n" << kUsage;
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "loadgen: " << e.what() << "\n";
    return 1;
  }
}
