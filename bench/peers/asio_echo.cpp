// Boost.Asio echo server for bench/echo: the classic session design.
//
// Each session is held by a shared_ptr that its pending handlers capture, so it
// lives exactly as long as an operation is outstanding. async_read_some fills the
// session's buffer; async_write sends all of it back (Asio retries on EAGAIN and
// keeps the remaining bytes itself); then the next read starts. One thread runs
// the io_context, created with concurrency hint 1 so Asio may skip its locking.
//
// Usage: asio_echo PORT   (listens on 127.0.0.1)
#include <boost/asio.hpp>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <memory>

using boost::asio::ip::tcp;

namespace {

class Session : public std::enable_shared_from_this<Session> {
public:
    explicit Session(tcp::socket s) : sock_(std::move(s)) {}

    void start()
    {
        boost::system::error_code ec;
        sock_.set_option(tcp::no_delay(true), ec);
        read();
    }

private:
    void read()
    {
        auto self = shared_from_this();
        sock_.async_read_some(boost::asio::buffer(buf_),
                              [this, self](const boost::system::error_code &ec, std::size_t n) {
                                  if (!ec)
                                      write(n);
                              });
    }

    void write(std::size_t n)
    {
        auto self = shared_from_this();
        boost::asio::async_write(sock_, boost::asio::buffer(buf_.data(), n),
                                 [this, self](const boost::system::error_code &ec, std::size_t) {
                                     if (!ec)
                                         read();
                                 });
    }

    tcp::socket sock_;
    std::array<char, 64 * 1024> buf_;
};

class Server {
public:
    Server(boost::asio::io_context &io, unsigned short port)
        : acceptor_(io, tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), port))
    {
        accept();
    }

private:
    void accept()
    {
        acceptor_.async_accept([this](const boost::system::error_code &ec, tcp::socket s) {
            if (!ec)
                std::make_shared<Session>(std::move(s))->start();
            accept();
        });
    }

    tcp::acceptor acceptor_;
};

} // namespace

int main(int argc, char **argv)
{
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    try {
        boost::asio::io_context io(1);
        Server server(io, static_cast<unsigned short>(std::atoi(argv[1])));
        std::fprintf(stderr, "asio_echo: listening on 127.0.0.1:%s\n", argv[1]);
        io.run();
    } catch (const std::exception &e) {
        std::fprintf(stderr, "asio_echo: %s\n", e.what());
        return 1;
    }
    return 0;
}
